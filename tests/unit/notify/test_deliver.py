"""The delivery step against a real receiver on loopback: signatures, retries on the
schedule, Retry-After, 3xx, 410, dead events, and every attempt in the database."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from openai import OpenAI

from orchestrator import webhooks as webhook_ops
from orchestrator.config import Settings
from orchestrator.db import webhooks as rows
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job, WebhookAttempt, WebhookDelivery
from orchestrator.db.transition import insert_job
from orchestrator.db.types import new_id
from orchestrator.loopback import free_port
from orchestrator.notify import deliver, ssrf
from orchestrator.notify.receiver import Received, Receiver
from orchestrator.scheduler import Scheduler
from tests.helpers import (
    OTHER_SECRET,
    SECRET,
    SECRET_NAME,
    Clock,
    claim_deliveries,
    hooked_job,
)

LOOPBACK = [ssrf.AllowedNetwork.parse("127.0.0.1/32")]


class Script:
    """Answers a receiver gives, in order; the last one repeats."""

    def __init__(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        self.answers = [a if isinstance(a, tuple) else (a, {}) for a in answers]

    def __call__(self, received: Received) -> tuple[int, dict[str, str]]:
        if not received.verified:
            return 400, {}
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hook_settings(hook_settings: Settings) -> Settings:
    return hook_settings.model_copy(update={"webhook_allow_networks": LOOPBACK,
                                            "webhook_retry_schedule_s": [0.0, 10.0, 100.0],
                                            "webhook_timeout_s": 5.0})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET, respond=Script(200)) as running:
        yield running


def event_for(engine: sa.Engine, url: str, clock: Clock, secret: str = SECRET_NAME) -> str:
    """A job whose target gets every transition: its queued event is written at once."""
    return hooked_job(engine, url, clock(), secret=secret)


def attempt_due(engine: sa.Engine, settings: Settings, clock: Clock) -> list[str]:
    """Claim every due delivery, as the scheduler does, and run one attempt of each."""
    lease, claimed = claim_deliveries(engine, clock(), settings.webhook_lease_s)
    return [deliver.run(d, lease, settings=settings, engine=engine, now=clock) for d in claimed]


def state(engine: sa.Engine, delivery_id: str) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    with session_scope(engine) as session:
        found = rows.delivery(session, delivery_id)
        assert found is not None
        return found, rows.attempts(session, delivery_id)


class TestDelivered:
    def test_a_signed_event_is_delivered_and_its_attempt_logged(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock,
            receiver: Receiver) -> None:
        delivery_id = event_for(engine, receiver.url, clock)

        assert attempt_due(engine, hook_settings, clock) == ["delivered"]

        [got] = receiver.received
        assert got.verified and got.webhook_id == delivery_id and got.type == "job.queued"
        row, [attempt] = state(engine, delivery_id)
        assert (row.status, row.attempts, row.delivered_at, row.next_attempt_at) == (
            "delivered", 1, clock(), None)
        assert (attempt.attempt, attempt.outcome, attempt.status_code) == (1, "delivered", 200)
        assert attempt.latency_ms is not None and attempt.latency_ms > 0
        assert attempt.response_snippet == '{"verified": true}'

    def test_the_official_openai_sdk_verifies_it_too(self, engine: sa.Engine,
                                                     hook_settings: Settings, clock: Clock,
                                                     receiver: Receiver) -> None:
        """Standard Webhooks is what OpenAI's SDK checks: a second, independent verifier."""
        event_for(engine, receiver.url, clock)
        attempt_due(engine, hook_settings, clock)

        [got] = receiver.received
        with OpenAI(api_key="sk-unused", webhook_secret=SECRET) as sdk:
            sdk.webhooks.verify_signature(got.body, got.headers)

    def test_while_a_secret_rotates_both_the_old_and_the_new_one_verify(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock,
            monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ROTATING_SECRET", f"{OTHER_SECRET} {SECRET}")
        with Receiver(SECRET) as old, Receiver(OTHER_SECRET) as new:
            event_for(engine, old.url, clock, secret="ROTATING_SECRET")
            event_for(engine, new.url, clock, secret="ROTATING_SECRET")

            assert attempt_due(engine, hook_settings, clock) == ["delivered", "delivered"]
            signature = old.received[0]
        assert old.received[0].verified and new.received[0].verified
        assert signature.webhook_id.startswith("msg_")


class TestRetries:
    def test_a_receiver_down_then_back_gets_the_event_with_the_same_id(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/webhooks"
        delivery_id = event_for(engine, url, clock)

        assert attempt_due(engine, hook_settings, clock)[0].startswith("retry in")
        clock.advance(5)
        assert attempt_due(engine, hook_settings, clock) == []  # not due before ~10 s
        clock.advance(10)
        with Receiver(SECRET, port=port) as back:
            assert attempt_due(engine, hook_settings, clock) == ["delivered"]

        assert [r.webhook_id for r in back.verified()] == [delivery_id]
        _, attempts = state(engine, delivery_id)
        assert [(a.attempt, a.outcome) for a in attempts] == [(1, "failed"), (2, "delivered")]
        assert "cannot reach" in (attempts[0].error or "")

    @pytest.mark.parametrize(("status", "honoured"), [
        pytest.param(429, True, id="429"),
        pytest.param(503, True, id="503"),
        pytest.param(500, False, id="500-retry-after-ignored"),
    ])
    def test_retry_after_is_respected_on_429_and_503(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock, status: int,
            honoured: bool) -> None:
        with Receiver(SECRET, respond=Script((status, {"retry-after": "60"}), 200)) as hook:
            delivery_id = event_for(engine, hook.url, clock)
            attempt_due(engine, hook_settings, clock)

            row, [attempt] = state(engine, delivery_id)
            assert attempt.status_code == status and attempt.outcome == "failed"
            assert row.next_attempt_at is not None
            wait = (row.next_attempt_at - clock()).total_seconds()
            if honoured:
                assert wait == pytest.approx(60, abs=0.1)
            else:
                assert 8 <= wait <= 12  # the schedule's 10 s, jittered ±20 %

    def test_a_redirect_is_a_failure_and_is_not_followed(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        with Receiver(SECRET) as elsewhere, \
                Receiver(SECRET, respond=Script((302, {"location": elsewhere.url}))) as hook:
            delivery_id = event_for(engine, hook.url, clock)
            assert attempt_due(engine, hook_settings, clock)[0].startswith("retry in")

            row, [attempt] = state(engine, delivery_id)
            assert (row.status, attempt.outcome, attempt.status_code, attempt.error) == (
                "pending", "failed", 302, "HTTP 302")
            assert elsewhere.received == []

    def test_after_the_last_attempt_the_event_is_dead_and_keeps_its_attempts(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        with Receiver(SECRET, respond=Script(500)) as hook:
            delivery_id = event_for(engine, hook.url, clock)
            results = []
            for _ in range(3):
                results += attempt_due(engine, hook_settings, clock)
                clock.advance(200)

            assert results[-1] == "dead" and len(hook.received) == 3
        row, attempts = state(engine, delivery_id)
        assert (row.status, row.attempts, row.dead_at, row.last_status_code) == (
            "dead", 3, clock() - timedelta(seconds=200), 500)
        assert [a.status_code for a in attempts] == [500, 500, 500]
        assert {r.webhook_id for r in hook.received} == {delivery_id}
        assert attempt_due(engine, hook_settings, clock) == []


class TestGone:
    def test_a_410_disables_the_endpoint_and_its_events_die_without_being_sent(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        with Receiver(SECRET, respond=Script(410, 200)) as hook:
            first = event_for(engine, hook.url, clock)
            assert attempt_due(engine, hook_settings, clock) == ["dead"]
            second = event_for(engine, hook.url, clock)
            assert attempt_due(engine, hook_settings, clock) == ["dead"]

            assert len(hook.received) == 1
            row, [attempt] = state(engine, first)
            assert (row.status, attempt.status_code) == ("dead", 410)
            later, attempts = state(engine, second)
            assert (later.status, later.attempts, attempts) == ("dead", 0, [])
            assert (later.last_error or "").startswith("endpoint disabled: 410 Gone at ")
            with engine.connect() as conn:
                assert conn.exec_driver_sql(
                    "SELECT state FROM webhook_endpoints").scalar_one() == "disabled"


class TestRefused:
    def test_a_missing_secret_sends_nothing_and_is_retried(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock,
            receiver: Receiver) -> None:
        delivery_id = event_for(engine, receiver.url, clock, secret="NOT_SET_ANYWHERE")

        assert attempt_due(engine, hook_settings, clock)[0].startswith("retry in")

        _, [attempt] = state(engine, delivery_id)
        assert attempt.outcome == "refused" and receiver.received == []
        assert attempt.error == ("not sent: webhook secret NOT_SET_ANYWHERE is not set for "
                                 "project default; the operator sets it (or "
                                 "NOT_SET_ANYWHERE_FILE) and lists it for the project in "
                                 "TUNECTL_WEBHOOK_PROJECT_SECRETS")

    def test_a_job_signs_only_with_a_secret_its_project_was_given(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock,
            receiver: Receiver) -> None:
        """Project other's job names the default project's secret (set on the worker): it
        is refused as if it were not set, so its receiver never gets a request signed with
        another project's secret."""
        delivery_id = hooked_job(engine, receiver.url, clock(), project="other")

        assert attempt_due(engine, hook_settings, clock)[0].startswith("retry in")

        _, [attempt] = state(engine, delivery_id)
        assert attempt.outcome == "refused" and receiver.received == []
        assert attempt.error == (f"not sent: webhook secret {SECRET_NAME} is not set for "
                                 f"project other; the operator sets it (or {SECRET_NAME}_FILE) "
                                 "and lists it for the project in "
                                 "TUNECTL_WEBHOOK_PROJECT_SECRETS")

    def test_a_configured_endpoint_signs_with_its_operator_named_secret_for_every_project(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock,
            configure: Callable[..., None], receiver: Receiver) -> None:
        configure(TUNECTL_WEBHOOKS=[{"url": receiver.url, "secret": SECRET_NAME,
                                     "events": ["all"]}])
        with session_scope(engine) as session:
            insert_job(session, Job(id=new_id("job"), project="other", name="j",
                                    provider="openai", base_model="m", method="sft", spec={},
                                    spec_sha256="0" * 64, training_blob="0" * 64),
                       reason="test", now=clock())

        assert attempt_due(engine, hook_settings, clock) == ["delivered"]
        assert receiver.received[0].payload["data"]["job"]["project"] == "other"


@contextmanager
def raw_server(answer: Callable[[socket.socket, bytes], None]) -> Iterator[str]:
    """A loopback server that reads each request's head and lets ``answer`` write
    whatever it likes back; yields its webhook URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                with contextlib.suppress(OSError):
                    answer(conn, head)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/webhooks"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


class TestBounded:
    def test_an_endpoint_dripping_its_answer_is_cut_off_at_the_attempts_deadline(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        """Each header byte comes well within httpx's per-read timeout, so only the
        attempt's own deadline ends it."""
        def drip(conn: socket.socket, _: bytes) -> None:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):
                conn.sendall(b"x")
                time.sleep(0.05)

        settings = hook_settings.model_copy(update={"webhook_timeout_s": 0.5})
        with raw_server(drip) as url:
            delivery_id = event_for(engine, url, clock)
            started = time.monotonic()
            [result] = attempt_due(engine, settings, clock)
            took = time.monotonic() - started

        assert result.startswith("retry in") and took < 2
        _, [attempt] = state(engine, delivery_id)
        assert (attempt.outcome, attempt.error) == (
            "failed", "timed out: the attempt took over 0.5 s")

    def test_the_answer_is_asked_for_and_kept_uncompressed(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        """A gzip bomb (20 KiB that inflate to 20 MiB) is kept as the bytes that came:
        nothing is decompressed."""
        bomb = gzip.compress(b"\0" * (20 << 20))
        heads: list[bytes] = []

        def gzipped(conn: socket.socket, head: bytes) -> None:
            heads.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
                         b"content-length: %d\r\n\r\n" % len(bomb) + bomb)

        with raw_server(gzipped) as url:
            delivery_id = event_for(engine, url, clock)
            assert attempt_due(engine, hook_settings, clock) == ["delivered"]

        assert b"\r\naccept-encoding: identity\r\n" in heads[0]
        _, [attempt] = state(engine, delivery_id)
        assert attempt.response_snippet is not None
        assert attempt.response_snippet.startswith("\x1f\ufffd")  # gzip's magic, undecoded
        assert len(attempt.response_snippet) <= deliver.SNIPPET_BYTES


class Killed(BaseException):
    """The worker process dying mid-attempt."""


class TestLeases:
    def scheduler(self, engine: sa.Engine, settings: Settings, clock: Clock,
                  sent: list[tuple[str, str, str]]) -> Scheduler:
        """A scheduler that keeps the deliveries it sends in ``sent`` (and drops job steps)."""
        def keep(step: str, item: str, lease: str) -> None:
            if step == deliver.DELIVER:
                sent.append((step, item, lease))

        return Scheduler(settings, engine, keep, now=clock)

    def test_a_message_waiting_in_the_broker_is_not_sent_again(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock,
            receiver: Receiver) -> None:
        """The delivery's lease counts from the worker's take-up: a backlog longer than an
        attempt's lease makes the scheduler send nothing twice."""
        sent: list[tuple[str, str, str]] = []
        event_for(engine, receiver.url, clock)
        assert self.scheduler(engine, hook_settings, clock, sent).tick().delivering == 1

        clock.advance(hook_settings.webhook_lease_s + 5)  # still queued at the broker
        assert self.scheduler(engine, hook_settings, clock, sent).tick().delivering == 0

        [(_, delivery_id, lease)] = sent
        assert deliver.run(delivery_id, lease, settings=hook_settings, engine=engine,
                           now=clock) == "delivered"
        row, _ = state(engine, delivery_id)
        assert row.attempts == 1 and len(receiver.received) == 1

    def test_an_attempt_lost_with_its_worker_is_retried_on_the_schedule(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock,
            receiver: Receiver) -> None:
        """Once the lost attempt's lease is rescued, the retry waits the schedule's next
        delay from when that attempt started, instead of following at once."""
        settings = hook_settings.model_copy(
            update={"webhook_retry_schedule_s": [0.0, 100.0, 1000.0]})
        sent: list[tuple[str, str, str]] = []
        delivery_id = event_for(engine, receiver.url, clock)
        self.scheduler(engine, settings, clock, sent).tick()
        [(_, _, lease)] = sent

        def dies(host: str, port: int) -> list[str]:
            raise Killed

        with pytest.raises(Killed):
            deliver.run(delivery_id, lease, settings=settings, engine=engine, now=clock,
                        resolver=dies)

        sent.clear()
        clock.advance(settings.webhook_lease_s + 1)
        self.scheduler(engine, settings, clock, sent).tick()
        row, attempts = state(engine, delivery_id)
        assert sent == [] and attempts == [] and row.lease_owner is None
        assert row.next_attempt_at is not None
        assert 80 <= (row.next_attempt_at - (clock() - timedelta(
            seconds=settings.webhook_lease_s + 1))).total_seconds() <= 120
        clock.advance(120)
        self.scheduler(engine, settings, clock, sent).tick()
        [(_, _, again)] = sent
        assert deliver.run(delivery_id, again, settings=settings, engine=engine,
                           now=clock) == "delivered"
        assert state(engine, delivery_id)[0].attempts == 2


class TestQueues:
    def test_deliveries_go_to_their_own_queue(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from workers import tasks

        sent: list[tuple[str, str]] = []
        monkeypatch.setattr(tasks.app, "send_task",
                            lambda name, args, queue: sent.append((name, queue)))

        tasks.dispatch(deliver.DELIVER, "msg_1", "lease_1")
        tasks.dispatch("poll", "job_1", "lease_2")

        assert sent == [("tunectl.notify.deliver", "tunectl.notify"),
                        ("tunectl.step.poll", "tunectl")]


class TestRedeliver:
    def test_a_pending_event_keeps_the_attempts_it_had_left(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        """One attempt of three failed; a redelivery sends it now, and it still dies only
        after the schedule's three attempts, not at the redelivered one."""
        with Receiver(SECRET, respond=Script(500)) as hook:
            delivery_id = event_for(engine, hook.url, clock)
            assert attempt_due(engine, hook_settings, clock)[0].startswith("retry in")

            webhook_ops.redeliver(engine, delivery_id, settings=hook_settings, now=clock())
            results = attempt_due(engine, hook_settings, clock)
            clock.advance(200)
            results += attempt_due(engine, hook_settings, clock)

        assert results[0].startswith("retry in") and results[1] == "dead"
        row, attempts = state(engine, delivery_id)
        assert (row.status, row.attempts, row.attempt_limit, len(attempts)) == (
            "dead", 3, 3, 3)

    def test_a_dead_event_gets_one_more_attempt_under_its_webhook_id(
            self, engine: sa.Engine, hook_settings: Settings, clock: Clock) -> None:
        with Receiver(SECRET, respond=Script(500, 500, 500, 200)) as hook:
            delivery_id = event_for(engine, hook.url, clock)
            for _ in range(3):
                attempt_due(engine, hook_settings, clock)
                clock.advance(200)
            assert state(engine, delivery_id)[0].status == "dead"

            webhook_ops.redeliver(engine, delivery_id, settings=hook_settings, now=clock())

            assert attempt_due(engine, hook_settings, clock) == ["delivered"]
            assert [r.webhook_id for r in hook.received] == [delivery_id] * 4
        assert state(engine, delivery_id)[0].attempt_limit == 4
