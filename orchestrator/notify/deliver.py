"""The delivery step (Celery task ``tunectl.notify.deliver``): one attempt to deliver one
webhook event, and what follows from it.

The scheduler claims due deliveries from the database and sends one message each, as it
does for job steps; the events of a step's own transition are sent as soon as it commits.
An attempt signs the stored payload with the current time and every secret of its name,
resolves the endpoint through the SSRF guard and sends it to the checked address without
following redirects, all within one deadline (``webhook_timeout_s``, the lookup included:
httpx's own timeouts bound each read, not the whole, so an endpoint dripping its answer
would otherwise hold the worker), then records the attempt:

- 2xx: delivered.
- 410 Gone: the endpoint is disabled (until ``tunectl webhooks enable URL``), the event dead.
- anything else (3xx included), a timeout, a network error, a refusal (the SSRF guard, a
  missing secret): the next attempt is due after the schedule's next delay, jittered by
  ±20 %, or later when a 429 or 503 asked for more with Retry-After; after the last
  attempt the event is dead.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
import structlog

from orchestrator import __version__
from orchestrator.config import Settings
from orchestrator.db import queries
from orchestrator.db import webhooks as rows
from orchestrator.db.models import WebhookDelivery
from orchestrator.db.types import utcnow
from orchestrator.dispatch import Dispatch, send_leased
from orchestrator.errors import DestinationRefused, MissingCredential
from orchestrator.notify import schedule, sign, ssrf
from orchestrator.notify.outbox import Wake
from orchestrator.providers.http import retry_after

log = structlog.get_logger("tunectl.notify")

#: The step name the scheduler and the runner dispatch deliveries under.
DELIVER = "deliver"
#: Bytes of the response body kept with an attempt.
SNIPPET_BYTES = 500
#: The longest Retry-After honoured (a day): the schedule carries on after that.
RETRY_AFTER_CAP_S = 86400.0
#: Statuses whose Retry-After asks for a later attempt.
THROTTLED = frozenset({429, 503})

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def new_client(settings: Settings, verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """A client for webhooks: no redirects, no proxy settings from the environment, no
    kept-alive connections (each attempt connects to the address the SSRF guard just
    checked), and answers taken as they are sent (``accept-encoding: identity``; the
    snippet is read raw, never decompressed)."""
    return httpx.Client(
        timeout=httpx.Timeout(settings.webhook_timeout_s), verify=verify,
        follow_redirects=False, trust_env=False,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=0),
        headers={"user-agent": f"tunectl-webhooks/{__version__}",
                 "accept-encoding": "identity"})


def webhook_client(settings: Settings) -> httpx.Client:
    """The process's client for webhooks (``new_client``)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = new_client(settings)
        return _client


def reset_client() -> None:
    """Close and forget the process's webhook client (after a fork, and in tests); it keeps
    no connections open between attempts, so nothing is shared."""
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = None


@dataclass(frozen=True)
class Response:
    """What an endpoint answered."""

    status: int
    snippet: str
    retry_after: float | None


class Deadline:
    """The time an attempt has left; once it passes, the attempt's connection is shut
    down (from a timer thread), so that whatever read or write is under way ends."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's ``trace`` extension: note the connection's socket as it is made
        (and again once TLS wraps it)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            with self._lock:
                self._sock = info["return_value"].get_extra_info("socket")
                if self.expired:
                    self._shut()

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Shut the connection down if the deadline passes within the block."""
        timer = threading.Timer(self.left(), self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut()

    def _shut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)


def post(client: httpx.Client, destination: ssrf.Destination, headers: dict[str, str],
         body: bytes, deadline: Deadline) -> Response:
    """POST ``body`` to the checked address, naming the URL's host in the Host header and
    to TLS (SNI and the certificate check), and keep the start of the answer: its first
    chunk, as sent, so that an endpoint dripping or compressing its body cannot hold the
    attempt or fill memory.

    Raises:
        httpx.TimeoutException: the deadline passed (or one phase timed out).
        httpx.HTTPError: the request failed.
    """
    url = destination.url
    target = url.copy_with(host=str(destination.address))
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if url.scheme == "https":
        extensions["sni_hostname"] = destination.host
    try:
        with deadline.armed(), client.stream(
                "POST", target, content=body, extensions=extensions,
                timeout=httpx.Timeout(max(deadline.left(), 0.001)),
                headers={**headers, "host": url.netloc.decode("ascii")}) as response:
            head = next(response.iter_raw(SNIPPET_BYTES), b"")
    except httpx.HTTPError as exc:
        if deadline.expired:
            raise httpx.TimeoutException(
                f"the attempt took over {deadline.seconds:g} s") from exc
        raise
    # PostgreSQL text cannot hold NUL: an answer with NUL bytes must still be recorded.
    snippet = head[:SNIPPET_BYTES].decode("utf-8", errors="replace").replace("\0", "\ufffd")
    return Response(response.status_code, snippet, retry_after(response.headers))


def run(delivery_id: str, lease: str, *, settings: Settings, engine: sa.Engine,
        now: Callable[[], datetime] = utcnow, resolver: ssrf.Resolver = ssrf.system_resolver,
        client: httpx.Client | None = None) -> str:
    """Attempt the delivery if this message still holds its lease; return what happened."""
    with engine.begin() as conn:
        taken_at = now()
        delivery = queries.take_up_delivery(conn, delivery_id, lease=lease, now=taken_at,
                                            lease_s=settings.webhook_lease_s)
        if delivery is not None:
            rows.retry_if_lost(conn, delivery.id, lease, taken_at + timedelta(
                seconds=next_delay(settings, delivery.attempts, None)))
        endpoint = rows.endpoint(conn, delivery.endpoint_id) if delivery else None
        # A job spec's target may sign only with the secrets its project was given.
        project = rows.job_project(conn, delivery.job_id) \
            if delivery and delivery.source == "spec" else None
    if delivery is None or endpoint is None:
        log.info("webhook.skipped", delivery_id=delivery_id,
                 why="lease not held, lapsed, or delivered (duplicate or stale message)")
        return "skipped"
    with structlog.contextvars.bound_contextvars(delivery_id=delivery.id, job_id=delivery.job_id,
                                                 event_type=delivery.event_type,
                                                 endpoint_id=delivery.endpoint_id):
        limit = delivery.attempt_limit or len(settings.webhook_retry_schedule_s)
        if endpoint.state == "disabled" or delivery.attempts > limit:
            reason = (f"endpoint disabled: {endpoint.disabled_reason}"
                      if endpoint.state == "disabled"
                      else "its last attempt was interrupted (worker lost)")
            with engine.begin() as conn:
                rows.give_up(conn, delivery, lease, reason, now(),
                             attempted=endpoint.state != "disabled")
            log.warning("webhook.dead", why=reason, attempts=delivery.attempts)
            return "dead"
        from orchestrator import metrics  # not at import: a prefork worker sets it up first

        started = time.monotonic()
        attempt, answer = _attempt(delivery, endpoint.url, project, settings, resolver,
                                   client or webhook_client(settings), now)
        metrics.WEBHOOK_ATTEMPT_SECONDS.labels(attempt.outcome).observe(time.monotonic() - started)
        return _record(engine, delivery, lease, attempt, answer, limit, settings)


def _attempt(delivery: WebhookDelivery, url: str, project: str | None, settings: Settings,
             resolver: ssrf.Resolver, client: httpx.Client, now: Callable[[], datetime]
             ) -> tuple[rows.Attempt, Response | None]:
    """Sign, check and send; never raises for what an endpoint or the network does."""
    started = now()
    deadline = Deadline(settings.webhook_timeout_s)

    def done(outcome: str, error: str | None = None, answer: Response | None = None,
             latency_ms: float | None = None) -> tuple[rows.Attempt, Response | None]:
        return rows.Attempt(outcome, started, now(), answer.status if answer else None,
                            latency_ms, error, answer.snippet if answer else None), answer

    try:
        secrets = settings.webhook_secrets(delivery.secret_name, project=project)
        destination = ssrf.resolve(url, settings.webhook_allow_networks, resolver,
                                   timeout=deadline.left())
    except (MissingCredential, DestinationRefused) as exc:
        return done("refused", f"not sent: {exc}")
    except OSError as exc:
        return done("failed", f"cannot resolve the host: {exc}")
    # Signed at the wall clock's time, whatever clock schedules the attempts: receivers
    # check the timestamp against theirs.
    headers = {**sign.signed_headers(delivery.id, delivery.payload, secrets, utcnow()),
               "content-type": "application/json"}
    sent = time.monotonic()
    try:
        answer = post(client, destination, headers, delivery.payload.encode(), deadline)
    except httpx.TimeoutException as exc:
        return done("failed", f"timed out: {exc or type(exc).__name__}")
    except httpx.HTTPError as exc:
        return done("failed", f"cannot reach {destination.host} at "
                              f"{destination.address}: {exc}")
    latency_ms = round((time.monotonic() - sent) * 1000, 2)
    if 200 <= answer.status < 300:
        return done("delivered", None, answer, latency_ms)
    return done("failed", f"HTTP {answer.status}", answer, latency_ms)


def next_delay(settings: Settings, attempts: int, answer: Response | None) -> float:
    """Seconds until the attempt after ``attempts`` failed ones: the schedule's delay with
    ±20 % jitter, or the Retry-After of a 429 or 503 when that is longer (up to a day)."""
    delay = schedule.delay_s(settings, attempts)
    if answer is not None and answer.status in THROTTLED and answer.retry_after is not None:
        delay = max(delay, min(answer.retry_after, RETRY_AFTER_CAP_S))
    return delay


def _record(engine: sa.Engine, delivery: WebhookDelivery, lease: str, attempt: rows.Attempt,
            answer: Response | None, limit: int, settings: Settings) -> str:
    gone = answer is not None and answer.status == 410
    next_at: datetime | None = None
    if attempt.outcome == "delivered":
        result = "delivered"
    elif gone or delivery.attempts >= limit:
        result = "dead"
    else:
        delay = next_delay(settings, delivery.attempts, answer)
        next_at = attempt.finished_at + timedelta(seconds=delay)
        result = f"retry in {delay:.1f}s"
    disable = f"410 Gone at {attempt.finished_at:%Y-%m-%d %H:%M:%S} UTC" if gone else None
    with engine.begin() as conn:
        held = rows.record(conn, delivery, lease, attempt, next_attempt_at=next_at,
                           disable_endpoint=disable)
    if not held:
        result = "stale"
    level = log.info if attempt.outcome == "delivered" else log.warning
    level("webhook.attempt", attempt=delivery.attempts, outcome=attempt.outcome,
          status_code=attempt.status_code, latency_ms=attempt.latency_ms, error=attempt.error,
          result=result)
    if gone and held:
        log.error("webhook.endpoint_disabled", why=disable)
    return result


def send_now(engine: sa.Engine, dispatch: Dispatch, wake: Sequence[Wake],
             retry_at: datetime) -> int:
    """Send the deliver step for leased deliveries; return how many were sent. When the
    broker fails, the rest are handed back, due at ``retry_at``, for the scheduler."""
    return send_leased(engine, dispatch, [(DELIVER, d, lease) for d, lease in wake],
                       lambda conn, d, lease: rows.release(conn, d, lease, retry_at))
