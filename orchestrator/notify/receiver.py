"""A webhook receiver that verifies every request with the ``standardwebhooks`` package and
keeps what it got: ``tunectl demo`` prints its events, and the tests and the latency
benchmark count them. Standard library HTTP server, one thread per request, loopback only
by default.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

#: Bodies larger than this are refused (413) unread.
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    webhook_id: str
    #: The payload, when the signature verified.
    payload: dict[str, Any] | None
    #: Why the signature did not verify (None: it did).
    error: str | None
    #: Seconds since the epoch when the request arrived.
    arrived_at: float
    #: The request's headers (names in lower case) and body, as they arrived.
    headers: dict[str, str]
    body: bytes

    @property
    def verified(self) -> bool:
        return self.error is None

    @property
    def type(self) -> str | None:
        """The event type of a verified payload."""
        return None if self.payload is None else self.payload.get("type")


#: Chooses the answer to a request: (status, headers). The default is 200, or 400 when the
#: signature does not verify.
Responder = Callable[[Received], tuple[int, dict[str, str]]]


def _default_answer(received: Received) -> tuple[int, dict[str, str]]:
    return (200, {}) if received.verified else (400, {})


class Receiver:
    """A verifying receiver on ``host``:``port`` (0: a free port), run in a thread; over
    HTTPS with ``tls`` (a server-side context holding its certificate)."""

    def __init__(self, secret: str, *, host: str = "127.0.0.1", port: int = 0,
                 respond: Responder = _default_answer,
                 on_request: Callable[[Received], None] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._webhook = Webhook(secret)
        self._lock = threading.Lock()
        self.respond, self.on_request = respond, on_request
        self.received: list[Received] = []
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.scheme = "https" if tls else "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="receiver", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where to send webhooks."""
        return f"{self.scheme}://{self._server.server_address[0]!s}:{self.port}/webhooks"

    def verified(self) -> list[Received]:
        """The requests whose signature verified, in arrival order."""
        with self._lock:
            return [r for r in self.received if r.verified]

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def check(self, body: bytes, headers: dict[str, str]) -> Received:
        """Verify one request, as the HTTP handler does."""
        arrived = time.time()
        webhook_id = headers.get("webhook-id", "")
        try:
            payload = self._webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:  # malformed headers: ValueError
            return Received(webhook_id, None, f"{type(exc).__name__}: {exc}", arrived, headers,
                            body)
        return Received(webhook_id, payload, None, arrived, headers, body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                if size > MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                body = self.rfile.read(size)
                received = receiver.check(body, {k.lower(): v for k, v in self.headers.items()})
                with receiver._lock:
                    receiver.received.append(received)
                if receiver.on_request is not None:
                    receiver.on_request(received)
                status, headers = receiver.respond(received)
                answer = json.dumps({"verified": received.verified}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints events itself

        return Handler
