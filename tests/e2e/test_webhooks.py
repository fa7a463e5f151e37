"""Webhooks with real processes: a receiver that is down for a while gets every event once it
is back (same webhook-id across retries, valid signatures, nothing lost when the broker is
wiped meanwhile), and an OpenAI webhook finishes a job long before its next poll.

The emulator, ``tunectl scheduler``, ``tunectl worker`` and ``tunectl api`` run as separate
processes on the selected stack; the receiver is orchestrator/notify/receiver.py (it
verifies every request with ``standardwebhooks``) on a loopback port, which the SSRF guard
lets through only because ``TUNECTL_WEBHOOK_ALLOW_NETWORKS`` names it. The retry schedule
is seconds long here, set by configuration; nothing sleeps for the production schedule.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.config import get_settings
from orchestrator.loopback import free_port
from orchestrator.notify.receiver import Receiver
from tests.conftest import STACK
from tests.e2e.processes import Stack, wait_until
from tests.helpers import OTHER_SECRET, SECRET, write_dataset

WEBHOOK_ENV = {
    "E2E_WEBHOOK_SECRET": SECRET,
    "TUNECTL_WEBHOOK_PROJECT_SECRETS": '{"default": ["E2E_WEBHOOK_SECRET"]}',
    "TUNECTL_WEBHOOK_ALLOW_NETWORKS": '["127.0.0.1/32"]',
    "TUNECTL_WEBHOOK_RETRY_SCHEDULE_S": "[0, 0.5, 1, 1.5, 2, 2, 2, 2, 2, 2, 2, 2]",
    "TUNECTL_WEBHOOK_TIMEOUT_S": "1",
}


@pytest.fixture
def hooked(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The stack's processes and this test process (which submits) with webhook settings."""
    stack.overrides.update(WEBHOOK_ENV)
    for name, value in WEBHOOK_ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield stack
    get_settings.cache_clear()


def hooked_spec(directory: Path, name: str, url: str, **labels: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dataset = write_dataset(directory / f"{name}.jsonl")
    spec = directory / f"{name}.json"
    spec.write_text(json.dumps({
        "name": name, "provider": "openai", "base_model": "gpt-4o-mini-2024-07-18",
        "training_file": dataset.name, "labels": labels,
        "notify": [{"url": url, "secret": "E2E_WEBHOOK_SECRET", "events": ["all"]}]}))
    return spec


def deliveries(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT id, job_id, seq, event_type, status, attempts FROM webhook_deliveries "
            "ORDER BY job_id, seq")))


def attempts(engine: sa.Engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT delivery_id, outcome FROM webhook_attempts ORDER BY delivery_id, attempt"))
        found: dict[str, list[str]] = {}
        for delivery_id, outcome in rows:
            found.setdefault(delivery_id, []).append(outcome)
        return found


def flush_broker(stack: Stack) -> Callable[[], None] | None:
    if STACK != "production":
        return None
    import redis

    def flush() -> None:
        with redis.Redis.from_url(stack.broker_url) as client:
            client.flushdb()

    return flush


@pytest.mark.timeout(240)
def test_a_receiver_down_for_a_while_gets_every_event_once_it_is_back(hooked: Stack) -> None:
    """Three jobs run while nothing listens at the receiver's address; each event is retried
    on the schedule, and once the receiver is up every event arrives exactly once, signed,
    under the webhook-id all its attempts had. Deliveries have a worker of their own here
    (``--queues tunectl.notify``), as an operator may give them."""
    stack = hooked
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks"
    stack.start_emulator(job_duration=1.0)
    steps = stack.start_worker(queues="tunectl")
    notifier = stack.start_worker(concurrency=1, queues="tunectl.notify")
    stack.start_scheduler()
    jobs = [stack.submit_in_process(hooked_spec(stack.tmp_path / "specs", f"hooked-{i}", url))
            for i in range(3)]
    for job_id in jobs:
        stack.wait_for_state(job_id, {"succeeded"}, timeout=60)

    # A target that asks for every transition gets one event per history row.
    expected = {job_id: [f"job.{row['to']}" for row in stack.show(job_id)["history"]]
                for job_id in jobs}

    def all_failed_twice() -> bool:
        rows = deliveries(stack.engine)
        tried = attempts(stack.engine)
        return len(rows) == sum(map(len, expected.values())) and all(
            tried.get(r.id, []).count("failed") >= 2 for r in rows)

    wait_until(all_failed_twice, timeout=60, what="every event to fail twice (receiver down)")
    flush = flush_broker(stack)
    if flush is not None:
        flush()  # whatever delivery messages were queued or in flight are gone
    with Receiver(SECRET, port=port) as receiver:
        wait_until(lambda: all(r.status == "delivered" for r in deliveries(stack.engine)),
                   timeout=90, what="every event delivered")
        received = list(receiver.received)

    rows = deliveries(stack.engine)
    assert all(r.verified for r in received), [r.error for r in received if not r.verified]
    assert Counter(r.webhook_id for r in received) == Counter({r.id: 1 for r in rows})
    by_job: dict[str, list[str]] = {}
    for row in rows:
        by_job.setdefault(row.job_id, []).append(row.event_type)
        history = attempts(stack.engine)[row.id]
        assert history[-1] == "delivered" and set(history[:-1]) == {"failed"}, history
        assert row.attempts >= 3
    assert by_job == expected
    assert all(events[-1] == "job.succeeded" for events in by_job.values())
    payloads = {r.webhook_id: r.payload for r in received}
    for row in rows:
        payload = payloads[row.id]
        assert payload is not None
        assert (payload["type"], payload["data"]["job"]["id"],
                payload["data"]["transition"]["seq"]) == (row.event_type, row.job_id, row.seq)
    ran = "Task tunectl.notify.deliver["  # Celery's line for each task run
    assert ran in notifier.output() and ran not in steps.output()
    for proc in stack.procs.started:  # the signing secret never reaches a log
        assert SECRET.removeprefix("whsec_") not in proc.output(), proc.name


@pytest.mark.timeout(180)
def test_an_openai_webhook_finishes_a_job_long_before_its_next_poll(hooked: Stack) -> None:
    """Polls are a minute apart; the emulator's signed fine_tuning.job.succeeded webhook
    reaches ``tunectl api``, which has the job polled at once, and the receiver hears of
    the success within seconds."""
    stack = hooked
    api_port = free_port()
    stack.overrides.update(TUNECTL_POLL_INTERVAL_S="60", OPENAI_WEBHOOK_SECRET=OTHER_SECRET)
    emulator = stack.start_emulator(job_duration=2.0)
    emulator.set_scenario(webhooks={"url": f"http://127.0.0.1:{api_port}/webhooks/openai",
                                    "secret": OTHER_SECRET})
    api = stack.start_api(api_port)
    stack.start_worker()
    stack.start_scheduler()
    with Receiver(SECRET) as receiver:
        job_id = stack.submit_in_process(hooked_spec(stack.tmp_path / "specs", "fast",
                                                     receiver.url))
        stack.wait_for_state(job_id, {"training"}, timeout=30)
        done = stack.wait_for_state(job_id, {"succeeded"}, timeout=20)

        wait_until(lambda: any(r.type == "job.succeeded" for r in receiver.verified()),
                   timeout=10, what="the job.succeeded webhook")

    assert done.finished_at is not None and done.created_at is not None
    assert (done.finished_at - done.created_at).total_seconds() < 20  # not the 60 s poll
    received = [e for e in api.log_events() if e.get("event") == "webhook_in.received"]
    assert [(e["event_type"], e["polled"]) for e in received] == [
        ("fine_tuning.job.succeeded", [job_id])]
    assert emulator.stats()["webhooks"]["delivered"] == 1
