"""The one httpx client per process, and the translation of HTTP failures into ProviderError.

Nothing outside ``providers/`` sees an httpx exception: ``send`` turns timeouts and network
errors into ProviderUnavailable and classifies HTTP statuses as retryable (408, 409, 429,
5xx) or permanent (the rest of 4xx), reading ``retry-after-ms`` before ``retry-after``.
Calls made inside ``time_limit(seconds)`` time out sooner than the client's default.
"""

from __future__ import annotations

import contextvars
import json
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, NamedTuple

import httpx

from orchestrator import __version__
from orchestrator.config import Settings
from orchestrator.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)

_RETRYABLE_STATUS = frozenset({408, 409})
_client: httpx.Client | None = None
_client_lock = threading.Lock()
_time_limit: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tunectl_http_time_limit", default=None)


def shared_client(settings: Settings) -> httpx.Client:
    """The process's httpx client (connection reuse; timeouts set; never reads proxy env)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                timeout=httpx.Timeout(settings.http_timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
                headers={"user-agent": f"tunectl/{__version__}"},
                follow_redirects=False,
            )
        return _client


class Deadline:
    """A file to upload whose reads fail once ``seconds`` have passed, so an upload crawling
    along (each read within httpx's timeouts) cannot outlive its step's lease."""

    def __init__(self, file: BinaryIO, seconds: float, *, provider: str) -> None:
        self._file, self._seconds, self._provider = file, seconds, provider
        self._deadline = time.monotonic() + seconds

    def check(self) -> None:
        """Raise ProviderUnavailable once the deadline has passed."""
        if time.monotonic() > self._deadline:
            raise ProviderUnavailable(f"the upload did not finish within {self._seconds:g} s",
                                      provider=self._provider, operation="upload file")

    def read(self, size: int = -1) -> bytes:
        self.check()
        return self._file.read(size)

    def __getattr__(self, name: str) -> Any:  # fileno, seek, tell: for the content length
        return getattr(self._file, name)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Make every provider call inside the block time out after ``seconds`` (connecting,
    and each read or write), whatever the client's default."""
    token = _time_limit.set(seconds)
    try:
        yield
    finally:
        _time_limit.reset(token)


def set_shared_client(client: httpx.Client | None) -> None:
    """Replace the process's client: None after a fork (connections must not be shared),
    or a client of the caller's (an in-process emulator in tests)."""
    global _client
    with _client_lock:
        _client = client


def retry_after(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``retry-after``."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return _seconds(float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return _seconds(float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class ErrorInfo(NamedTuple):
    """What a provider's error body says."""

    message: str
    request_id: str | None = None
    #: The provider's machine-readable error code, if any.
    code: str | None = None
    #: The code means "stop retrying" whatever the status (e.g. OpenAI's insufficient_quota).
    permanent: bool = False
    #: The code means "slow down" whatever the status (e.g. DashScope's Throttling.*).
    throttled: bool = False
    #: Seconds the body asks us to wait (Google's RetryInfo), when no header says so.
    retry_after: float | None = None


def _seconds(value: float) -> float | None:
    return max(0.0, value) if math.isfinite(value) else None


def classify(response: httpx.Response, *, provider: str, operation: str,
             info: ErrorInfo) -> ProviderError:
    """The ProviderError for a non-2xx ``response``."""
    status = response.status_code
    should_retry = response.headers.get("x-should-retry")
    cls: type[ProviderError]
    if info.permanent:
        cls = ProviderRejected
    elif status == 429 or info.throttled:
        cls = RateLimited
    elif should_retry == "true" or (should_retry != "false" and (
            status in _RETRYABLE_STATUS or status >= 500)):
        cls = ProviderUnavailable
    elif status in (401, 403):
        cls = ProviderAuthError
    else:
        cls = ProviderRejected
    wait = retry_after(response.headers)
    return cls(info.message, provider=provider, operation=operation, status=status,
               request_id=info.request_id,
               retry_after=(info.retry_after if wait is None else wait) if cls.retryable
               else None)


def send(
    client: httpx.Client,
    request: httpx.Request,
    *,
    provider: str,
    operation: str,
    describe_error: Callable[[httpx.Response], ErrorInfo],
    accept: Collection[int] = (),
) -> httpx.Response:
    """Send ``request``; return a 2xx response (or one whose status is in ``accept``) or
    raise the matching ProviderError.

    ``describe_error`` reads a provider's error body.
    """
    limit = _time_limit.get()
    if limit is not None:
        request.extensions["timeout"] = httpx.Timeout(limit).as_dict()
    try:
        try:
            response = client.send(request)
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(f"timed out ({type(exc).__name__})", provider=provider,
                                      operation=operation) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"cannot reach {request.url.host}: {exc}",
                                      provider=provider, operation=operation) from exc
        if response.is_success or response.status_code in accept:
            return response
        raise classify(response, provider=provider, operation=operation,
                       info=describe_error(response))
    except ProviderError as exc:  # an upload's Deadline raises one from inside send too
        _count(exc)
        raise


def _count(exc: ProviderError) -> None:
    """Count a failed provider call, here where every call passes, handled or not."""
    # Imported on first failure: a prefork worker must set PROMETHEUS_MULTIPROC_DIR before
    # anything imports prometheus_client, and the CLI imports this module at start.
    from orchestrator import metrics

    metrics.PROVIDER_ERRORS.labels(exc.provider, exc.operation, type(exc).__name__).inc()


def json_object(response: httpx.Response, *, provider: str, operation: str,
                parse: Callable[[bytes], Any] = json.loads) -> dict[str, Any]:
    """A 2xx response's body, which must be a JSON object (else ProviderUnavailable: a
    proxy's error page, a truncated answer)."""
    try:
        body = parse(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        error = ProviderUnavailable("the response was not JSON", provider=provider,
                                    operation=operation, status=response.status_code)
        _count(error)
        raise error from exc
    if not isinstance(body, dict):
        error = ProviderUnavailable("the response was not a JSON object", provider=provider,
                                    operation=operation, status=response.status_code)
        _count(error)
        raise error
    return body
