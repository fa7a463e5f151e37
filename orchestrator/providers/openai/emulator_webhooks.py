"""The OpenAI emulator's webhooks: ``fine_tuning.job.succeeded|failed|cancelled`` sent to the
scenario's target as OpenAI sends them.

Each event is POSTed with the headers OpenAI uses: ``webhook-id`` (``wh_…``, the same on
every retry), ``webhook-timestamp``, ``webhook-signature`` (Standard Webhooks ``v1``, which
the official SDK's ``client.webhooks.unwrap`` verifies), ``user-agent: OpenAI/1.0
(+https://platform.openai.com/docs/webhooks)`` and ``content-type: application/json``. An
attempt that gets no 2xx is retried 1 s, 2 s, 4 s … later, up to the target's ``attempts``.

One thread sends them, started when the scenario first turns webhooks on. Since jobs advance
only when the store is called, it also wakes when the next running job is due to end, so an
event leaves as soon as its job ends rather than at the next API call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from orchestrator.notify.sign import signed_headers
from orchestrator.providers.openai.emulator_state import Store, WebhookEvent, WebhookTarget, new_id

USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
#: Never sleep longer than this (a clock that jumps, a scenario that changed).
MAX_WAIT_S = 1.0


def request(event: WebhookEvent, webhook_id: str, secret: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one webhook delivery, signed now."""
    body = json.dumps(event.to_api(), separators=(",", ":"))
    headers = {**signed_headers(webhook_id, body, [secret], datetime.now(UTC)),
               "user-agent": USER_AGENT, "content-type": "application/json"}
    return body.encode(), headers


class WebhookSender:
    """Sends the store's webhook events from one thread."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store, self._clock = store, clock
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        store.on_change = self.wake
        if store.scenario().webhooks is not None:
            self.wake()

    def wake(self) -> None:
        """Look at the store now (starting the thread the first time)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="emulator-webhooks",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        #: (due at, attempt number, event, webhook-id) of events still to send.
        queue: list[tuple[float, int, WebhookEvent, str]] = []
        with httpx.Client(timeout=5.0, follow_redirects=False, trust_env=False) as client:
            while True:
                self._wake.clear()
                target, events, next_end = self._store.take_webhooks()
                now = self._clock()
                queue += [(now, 1, event, new_id("wh_")) for event in events]
                due, queue = [q for q in queue if q[0] <= now], [q for q in queue if q[0] > now]
                for _, attempt, event, webhook_id in due:
                    if target is None:
                        continue  # webhooks were turned off: drop what was queued
                    if not self._send(client, target, event, webhook_id) and \
                            attempt < target.attempts:
                        queue.append((self._clock() + 2.0 ** (attempt - 1), attempt + 1, event,
                                      webhook_id))
                wakes = [t for t in (next_end, *(q[0] for q in queue)) if t is not None]
                wait = min(wakes) - self._clock() if wakes else MAX_WAIT_S
                self._wake.wait(min(MAX_WAIT_S, max(0.001, wait)))

    def _send(self, client: httpx.Client, target: WebhookTarget, event: WebhookEvent,
              webhook_id: str) -> bool:
        body, headers = request(event, webhook_id, target.secret)
        try:
            delivered = client.post(target.url, content=body, headers=headers).is_success
        except httpx.HTTPError:
            delivered = False
        self._store.count_webhook("delivered" if delivered else "failed")
        return delivered
