"""The webhook_delivery_health view returns the right figures for endpoints whose events
went through real attempts against real receivers (delivered, retried, dead, 410 Gone,
refused by the SSRF guard), on this stack's dialect; each figure is computed again here
from the rows the attempts wrote."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlmodel import select

from orchestrator.config import Settings
from orchestrator.db.engine import session_scope
from orchestrator.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from orchestrator.db.types import utcnow
from orchestrator.loopback import free_port
from orchestrator.metrics import DatabaseCollector
from orchestrator.notify.receiver import Receiver
from tests.helpers import SECRET, Clock
from tests.unit.db.test_views import nearest_rank
from tests.unit.notify.test_deliver import LOOPBACK, Script, attempt_due, event_for

REFUSED = "http://10.1.2.3/hook"


def as_time(value: datetime | str | None) -> datetime | None:
    """A time read from a view: SQLite gives its stored text, PostgreSQL a datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value


def run_out(engine: sa.Engine, settings: Settings, clock: Clock) -> None:
    """Every due attempt, round after round, past each retry's delay (3 attempts)."""
    for _ in range(3):
        attempt_due(engine, settings, clock)
        clock.advance(200)


def expected(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """The view's figures, from the tables' rows."""
    with session_scope(engine) as session:
        endpoints = list(session.exec(select(WebhookEndpoint)))
        deliveries = list(session.exec(select(WebhookDelivery)))
        attempts = list(session.exec(select(WebhookAttempt)))
    day_ago = utcnow() - timedelta(days=1)
    events: dict[str, list[WebhookDelivery]] = defaultdict(list)
    tries: dict[str, list[WebhookAttempt]] = defaultdict(list)
    for d in deliveries:
        events[d.endpoint_id].append(d)
    for a in attempts:
        tries[a.endpoint_id].append(a)
    figures = {}
    for e in endpoints:
        mine, done = events[e.id], sorted(tries[e.id], key=lambda a: (a.started_at, a.id or 0))
        pending = [d.created_at for d in mine if d.status == "pending"]
        latencies = [a.latency_ms for a in done if a.latency_ms is not None]
        last = done[-1] if done else None
        figures[e.id] = {
            "url": e.url, "state": e.state, "disabled_reason": e.disabled_reason,
            **{f"events_{s}": sum(d.status == s for d in mine)
               for s in ("pending", "delivered", "dead")},
            "oldest_pending_at": min(pending, default=None),
            "attempts": len(done),
            **{f"attempts_{o}": sum(a.outcome == o for a in done)
               for o in ("delivered", "failed", "refused")},
            "attempts_24h": sum(a.started_at >= day_ago for a in done),
            "failures_24h": sum(a.started_at >= day_ago and a.outcome != "delivered"
                                for a in done),
            "p50_latency_ms": nearest_rank(latencies, 0.5) if latencies else None,
            "p95_latency_ms": nearest_rank(latencies, 0.95) if latencies else None,
            "last_attempt_at": last.started_at if last else None,
            "last_outcome": last.outcome if last else None,
            "last_status_code": last.status_code if last else None,
            "last_error": last.error if last else None,
            "last_delivered_at": max((a.finished_at for a in done if a.outcome == "delivered"),
                                     default=None),
        }
    return figures


class Ticking(Clock):
    """A clock a quarter of a second later each time it is read: an attempt finishes
    after it started."""

    def __call__(self) -> datetime:
        self.advance(0.25)
        return self.current


@pytest.fixture
def urls(engine: sa.Engine, hook_settings: Settings) -> dict[str, str]:
    """Events sent through real attempts to six endpoints: one that always fails (its
    attempts over a day ago), one that takes them, one that fails once, one that answers
    410 Gone, one down at first (no answer, so no latency) and then up, and a private
    address the SSRF guard refuses. Returns their URLs by role."""
    settings = hook_settings.model_copy(update={"webhook_allow_networks": LOOPBACK,
                                                "webhook_retry_schedule_s": [0.0, 10.0, 100.0]})
    clock = Ticking()
    back_port = free_port()
    back_url = f"http://127.0.0.1:{back_port}/webhooks"
    with Receiver(SECRET, respond=Script(500)) as broken, \
            Receiver(SECRET, respond=Script(200)) as ok, \
            Receiver(SECRET, respond=Script(500, 200)) as flaky, \
            Receiver(SECRET, respond=Script(410)) as gone:
        clock.current = utcnow() - timedelta(days=2)
        event_for(engine, broken.url, clock)
        run_out(engine, settings, clock)

        clock.current = utcnow() - timedelta(hours=1)
        for url in (ok.url, ok.url, flaky.url, gone.url, gone.url, back_url, back_url,
                    back_url):
            event_for(engine, url, clock)
        attempt_due(engine, settings, clock)
        clock.advance(200)
        with Receiver(SECRET, port=back_port):
            run_out(engine, settings, clock)
        event_for(engine, REFUSED, clock)
        attempt_due(engine, settings, clock)
    return {"broken": broken.url, "ok": ok.url, "flaky": flaky.url, "gone": gone.url,
            "back": back_url, "refused": REFUSED}


def test_the_view_returns_each_endpoints_delivery_figures(
        engine: sa.Engine, urls: dict[str, str]) -> None:
    with engine.connect() as conn:
        found = {r["endpoint_id"]: r for r in (
            dict(row._mapping) for row in conn.execute(sa.text(
                "SELECT * FROM webhook_delivery_health")))}
    want = expected(engine)
    assert found.keys() == want.keys() and len(want) == 6
    for endpoint_id, computed in want.items():
        row = found[endpoint_id]
        for column, value in computed.items():
            got = row[column]
            if column.endswith("_at"):
                assert as_time(got) == value, (computed["url"], column)
            elif isinstance(value, float):
                assert got is not None and math.isclose(got, value, abs_tol=0.01), column
            else:
                assert got == value, (computed["url"], column)

    by_role = {role: next(r for r in found.values() if r["url"] == url)
               for role, url in urls.items()}

    def figures(role: str, *columns: str) -> tuple[Any, ...]:
        return tuple(by_role[role][c] for c in columns)

    assert figures("broken", "events_dead", "attempts_failed", "attempts_24h") == (1, 3, 0)
    assert figures("ok", "events_delivered", "last_status_code") == (2, 200)
    assert figures("flaky", "attempts_failed", "events_delivered", "failures_24h") == (1, 1, 1)
    assert figures("gone", "state", "events_dead", "attempts", "last_status_code") == (
        "disabled", 2, 1, 410)
    assert figures("back", "attempts_failed", "attempts_delivered", "events_delivered") == (
        3, 3, 3)
    assert figures("back", "last_delivered_at") > figures("back", "last_attempt_at")
    assert figures("refused", "events_pending", "attempts_refused", "last_outcome",
                   "p50_latency_ms") == (1, 1, "refused", None)
    refused = by_role["refused"]
    pending_for = (utcnow() - as_time(refused["oldest_pending_at"])).total_seconds()
    assert math.isclose(refused["oldest_pending_age_s"], pending_for, abs_tol=5)


def test_the_fleets_webhook_metrics_are_read_from_the_database(
        engine: sa.Engine, urls: dict[str, str]) -> None:
    with engine.connect() as conn:
        pending_since = conn.execute(sa.text(
            "SELECT next_attempt_at FROM webhook_deliveries WHERE status = 'pending'"),
        ).scalar_one()
    fleet = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for m in DatabaseCollector(engine).collect() for s in m.samples}

    def value(name: str, **labels: str) -> float:
        return fleet[(name, tuple(sorted(labels.items())))]

    assert [value("tunectl_webhook_events", status=s) for s in ("pending", "delivered",
                                                                "dead")] == [1, 6, 3]
    assert [value("tunectl_webhook_attempts_total", outcome=o)
            for o in ("delivered", "failed", "refused")] == [6, 8, 1]
    assert value("tunectl_webhook_endpoints_disabled") == 1
    overdue = (utcnow() - as_time(pending_since)).total_seconds()
    assert math.isclose(value("tunectl_webhook_delivery_lag_seconds"), overdue, abs_tol=5)


def test_each_attempt_is_timed_by_outcome(engine: sa.Engine, hook_settings: Settings) -> None:
    def count(outcome: str) -> float:
        return REGISTRY.get_sample_value("tunectl_webhook_attempt_duration_seconds_count",
                                         {"outcome": outcome}) or 0.0

    before = [count(o) for o in ("delivered", "refused")]
    settings = hook_settings.model_copy(update={"webhook_allow_networks": LOOPBACK})
    clock = Clock()
    with Receiver(SECRET) as ok:
        event_for(engine, ok.url, clock)
        event_for(engine, REFUSED, clock)
        attempt_due(engine, settings, clock)

    assert [count(o) - b for o, b in zip(("delivered", "refused"), before, strict=True)] == [
        1, 1]
