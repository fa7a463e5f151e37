"""Provider HTTP errors become ProviderError subclasses, with retry hints read right."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from orchestrator.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from orchestrator.providers.http import ErrorInfo, retry_after, send, time_limit


def describe(response: httpx.Response) -> ErrorInfo:
    return ErrorInfo("boom", response.headers.get("x-request-id"),
                     permanent=response.headers.get("x-code") == "insufficient_quota")


def call(status: int, headers: dict[str, str] | None = None,
         raise_exc: Exception | None = None) -> httpx.Response:
    def handler(request: httpx.Request) -> httpx.Response:
        if raise_exc:
            raise raise_exc
        return httpx.Response(status, headers=headers or {}, json={})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return send(client, client.build_request("GET", "https://api.test/x"), provider="p",
                operation="op", describe_error=describe)


@pytest.mark.parametrize(("status", "headers", "error"), [
    pytest.param(429, {}, RateLimited, id="429"),
    pytest.param(408, {}, ProviderUnavailable, id="408"),
    pytest.param(409, {}, ProviderUnavailable, id="409"),
    pytest.param(500, {}, ProviderUnavailable, id="500"),
    pytest.param(503, {}, ProviderUnavailable, id="503"),
    pytest.param(401, {}, ProviderAuthError, id="401"),
    pytest.param(403, {}, ProviderAuthError, id="403"),
    pytest.param(400, {}, ProviderRejected, id="400"),
    pytest.param(404, {}, ProviderRejected, id="404"),
    pytest.param(422, {}, ProviderRejected, id="422"),
    pytest.param(302, {"location": "https://elsewhere"}, ProviderRejected,
                 id="redirect-not-followed"),
    pytest.param(500, {"x-should-retry": "false"}, ProviderRejected, id="server-says-do-not-retry"),
    pytest.param(400, {"x-should-retry": "true"}, ProviderUnavailable, id="server-says-retry"),
    pytest.param(429, {"x-code": "insufficient_quota"}, ProviderRejected, id="quota-is-permanent"),
])
def test_statuses_are_classified(status: int, headers: dict[str, str], error: type) -> None:
    with pytest.raises(error) as info:
        call(status, headers)
    assert info.value.status == status
    assert info.value.retryable == (error in (RateLimited, ProviderUnavailable))


@pytest.mark.parametrize("exc", [
    pytest.param(httpx.ReadTimeout("slow"), id="timeout"),
    pytest.param(httpx.ConnectError("refused"), id="connect"),
    pytest.param(httpx.RemoteProtocolError("eof"), id="protocol"),
])
def test_transport_failures_are_retryable(exc: Exception) -> None:
    with pytest.raises(ProviderUnavailable):
        call(200, raise_exc=exc)


def test_the_request_id_and_retry_after_travel_with_the_error() -> None:
    with pytest.raises(RateLimited) as info:
        call(429, {"x-request-id": "req_1", "retry-after-ms": "1500", "retry-after": "9"})
    assert info.value.request_id == "req_1"
    assert info.value.retry_after == 1.5
    assert "op HTTP 429: boom (request req_1)" in str(info.value)


@pytest.mark.parametrize(("headers", "expected"), [
    pytest.param({"retry-after-ms": "250"}, 0.25, id="ms-first"),
    pytest.param({"retry-after": "7"}, 7.0, id="seconds"),
    pytest.param({"retry-after": "Tue, 24 Nov 2026 12:00:30 GMT"}, 30.0, id="http-date"),
    pytest.param({"retry-after": "soon"}, None, id="garbage"),
    pytest.param({"retry-after": "-5"}, 0.0, id="negative"),
    pytest.param({"retry-after": "inf"}, None, id="infinite"),
    pytest.param({"retry-after-ms": "nan"}, None, id="not-a-number"),
    pytest.param({}, None, id="absent"),
])
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert retry_after(httpx.Headers(headers), now) == expected


def test_provider_errors_survive_pickling() -> None:
    import pickle

    error = RateLimited("slow down", provider="openai", operation="op", status=429,
                        request_id="r", retry_after=3.0)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is RateLimited
    assert (back.status, back.retry_after, str(back)) == (429, 3.0, str(error))


def test_an_upload_past_its_deadline_fails_as_retryable(tmp_path: object) -> None:
    import io
    import time

    from orchestrator.providers.http import Deadline

    body = Deadline(io.BytesIO(b"x" * 10), 0.01, provider="p")
    assert body.read(4) == b"xxxx"
    time.sleep(0.02)
    with pytest.raises(ProviderUnavailable, match=r"did not finish within 0\.01 s"):
        body.read(4)
    assert body.tell() == 4  # everything else reaches the file


def test_calls_inside_a_time_limit_time_out_sooner() -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={})

    client = httpx.Client(transport=httpx.MockTransport(handler), timeout=60)
    for limit in (2.5, None):
        request = client.build_request("GET", "https://api.test/x")
        if limit is None:
            send(client, request, provider="p", operation="op", describe_error=describe)
        else:
            with time_limit(limit):
                send(client, request, provider="p", operation="op", describe_error=describe)

    assert set(seen[0].values()) == {2.5} and set(seen[1].values()) == {60.0}


@pytest.mark.parametrize(("status", "raise_exc", "error"), [
    pytest.param(400, None, "ProviderRejected", id="rejected"),
    pytest.param(429, None, "RateLimited", id="throttled"),
    pytest.param(200, httpx.ReadTimeout("slow"), "ProviderUnavailable", id="timed-out"),
])
def test_every_failed_call_is_counted_once_by_operation_and_class(
        status: int, raise_exc: Exception | None, error: str) -> None:
    """Counted where every call passes, so an error its caller handles (the cancel step's
    ProviderRejected, say) counts too."""
    from prometheus_client import REGISTRY

    labels = {"provider": "p", "operation": "op", "error": error}
    before = REGISTRY.get_sample_value("tunectl_provider_errors_total", labels) or 0.0
    with pytest.raises(ProviderError):
        call(status, raise_exc=raise_exc)

    assert REGISTRY.get_sample_value("tunectl_provider_errors_total", labels) == before + 1
