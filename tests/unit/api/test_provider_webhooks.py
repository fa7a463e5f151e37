"""``POST /webhooks/openai``: a verified job event polls that job at once; anything
unverified is refused and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from orchestrator.api import provider_webhooks
from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.db import queries
from orchestrator.db.models import JOBS, Job
from orchestrator.db.types import new_id
from orchestrator.notify.sign import signed_headers
from orchestrator.providers.http import shared_client
from orchestrator.providers.openai.emulator import Scenario
from tests.helpers import OTHER_SECRET, SECRET, Clock, Pump, in_process_emulator, make_spec


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pump(settings: Settings, engine: sa.Engine, clock: Clock) -> Pump:
    long_polls = settings.model_copy(update={"poll_interval_s": 3600.0,
                                             "openai_webhook_secret": SecretStr(SECRET)})
    return Pump(long_polls, engine, clock)


@pytest.fixture
def api(pump: Pump) -> Iterator[TestClient]:
    app = create_app(pump.settings, pump.engine)
    app.dependency_overrides[provider_webhooks.dispatch_dep] = lambda: pump.dispatch
    with TestClient(app) as client:
        yield client


@pytest.fixture
def training(pump: Pump, clock: Clock, tmp_path: Path) -> Iterator[Job]:
    """A job training at the emulator, next polled in an hour."""
    with in_process_emulator(clock, Scenario(job_duration_s=30)):
        job = pump.submit(make_spec(tmp_path))
        for _ in range(10):
            pump.scheduler().tick()
            pump.run_sent()
            if pump.job(job.id).state == "training":
                break
        yield pump.job(job.id)


def event(job_id: str, kind: str = "succeeded", *, secret: str = SECRET,
          at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    """A webhook as OpenAI sends it about ``job_id``, with a webhook-id of its own."""
    body = json.dumps({"id": "evt_1", "object": "event", "created_at": 1,
                       "type": f"fine_tuning.job.{kind}", "data": {"id": job_id}})
    return body.encode(), {**signed_headers(new_id("wh"), body, [secret],
                                            at or datetime.now(UTC)),
                           "content-type": "application/json"}


def post(api: TestClient, request: tuple[bytes, dict[str, str]], provider: str = "openai"
         ) -> Any:
    body, headers = request
    return api.post(f"/webhooks/{provider}", content=body, headers=headers)


class TestVerified:
    def test_a_job_that_ended_is_polled_at_once(self, api: TestClient, pump: Pump,
                                                clock: Clock, training: Job) -> None:
        assert training.state == "training"
        assert training.next_run_at == clock() + timedelta(hours=1)
        clock.advance(40)  # the job has ended at the emulator; tunectl would look in an hour

        answer = post(api, event(training.provider_job_id or ""))

        assert answer.status_code == 200
        assert answer.json() == {"received": True, "event_type": "fine_tuning.job.succeeded",
                                 "jobs": [training.id], "replayed": False}
        [(step, job_id, lease)] = pump.sent
        assert (step, job_id) == ("poll", training.id) and queries.is_poke(lease)
        assert pump.job(training.id).lease_owner == lease
        pump.run_sent()
        assert pump.job(training.id).state == "succeeded"

    def test_a_poll_running_when_the_webhook_comes_runs_again_at_once(
            self, api: TestClient, pump: Pump, clock: Clock, training: Job,
            engine: sa.Engine) -> None:
        """The poll that holds the job may have asked a moment before the job ended: the
        job is marked poked, and that poll's end sends the step again instead of waiting
        an hour."""
        with engine.begin() as conn:  # its poll is due now: the scheduler sends it
            conn.execute(sa.update(JOBS).where(JOBS.c.id == training.id)
                         .values(next_run_at=clock()))
        pump.scheduler().tick()
        [(_, _, lease)] = pump.sent

        answer = post(api, event(training.provider_job_id or ""))

        assert (answer.status_code, answer.json()["jobs"]) == (200, [training.id])
        assert len(pump.sent) == 1 and pump.job(training.id).lease_owner == lease
        assert pump.job(training.id).poked_at is not None
        assert pump.run_sent(limit=1) == ["waiting; poked, so running again now"]
        [(step, job_id, again)] = pump.sent
        assert (step, job_id) == ("poll", training.id) and again != lease
        job = pump.job(training.id)
        assert (job.lease_owner, job.poked_at) == (again, None)
        clock.advance(40)  # the job has ended by the time the second poll asks
        pump.run_sent()
        assert pump.job(training.id).state == "succeeded"

    @pytest.mark.parametrize("body", [
        pytest.param({"id": "evt_2", "object": "event", "created_at": 1,
                      "type": "batch.completed", "data": {"id": "batch_1"}}, id="other-type"),
        pytest.param({"id": "evt_3", "object": "event", "created_at": 1,
                      "type": "fine_tuning.job.succeeded", "data": {"id": "ftjob-unknown"}},
                     id="unknown-job"),
    ])
    def test_events_about_nothing_tunectl_runs_are_acknowledged(
            self, api: TestClient, pump: Pump, training: Job, body: dict[str, Any]) -> None:
        text = json.dumps(body)
        answer = api.post("/webhooks/openai", content=text,
                          headers=signed_headers("wh_x", text, [SECRET], datetime.now(UTC)))

        assert (answer.status_code, answer.json()["jobs"], pump.sent) == (200, [], [])


class TestReplays:
    def test_a_replayed_webhook_is_acknowledged_and_changes_nothing(
            self, api: TestClient, pump: Pump, training: Job) -> None:
        """A captured request sent again (same webhook-id, still within the signature's
        5 minutes), to this API process or another one on the same database."""
        request = event(training.provider_job_id or "")
        assert post(api, request).json()["jobs"] == [training.id]
        pump.run_sent()
        before = pump.job(training.id)
        other = create_app(pump.settings, pump.engine)
        other.dependency_overrides[provider_webhooks.dispatch_dep] = lambda: pump.dispatch

        with TestClient(other) as second:
            for client in (api, second):
                answer = post(client, request)

                assert answer.status_code == 200
                assert answer.json() == {"received": True, "replayed": True, "jobs": [],
                                         "event_type": "fine_tuning.job.succeeded"}
        assert pump.sent == [] and pump.job(training.id) == before

    def test_a_job_waiting_to_retry_keeps_its_backoff(
            self, api: TestClient, pump: Pump, clock: Clock, training: Job,
            engine: sa.Engine) -> None:
        """Its last poll was told to come back in a minute (429 with Retry-After): a webhook
        does not send the poll sooner."""
        backoff = {"next_run_at": clock() + timedelta(seconds=60), "attempts": 1,
                   "last_error": "openai get_job: 429 rate limited (retry after 60 s)"}
        with engine.begin() as conn:
            conn.execute(sa.update(JOBS).where(JOBS.c.id == training.id).values(**backoff))

        answer = post(api, event(training.provider_job_id or ""))

        assert (answer.status_code, answer.json()["jobs"], pump.sent) == (200, [], [])
        job = pump.job(training.id)
        assert (job.next_run_at, job.attempts, job.lease_owner) == (
            backoff["next_run_at"], 1, None)


    def test_a_poll_that_must_retry_is_not_rerun_by_a_webhook_that_came_meanwhile(
            self, api: TestClient, pump: Pump, clock: Clock, training: Job,
            engine: sa.Engine) -> None:
        """The poll holding the job gets a 429 asking for 60 s: the webhook that came while
        it asked does not make it run again at once."""
        with engine.begin() as conn:
            conn.execute(sa.update(JOBS).where(JOBS.c.id == training.id)
                         .values(next_run_at=clock()))
        pump.scheduler().tick()
        shared_client(pump.settings).put("/_emulator/scenario", json={
            "job_duration_s": 30, "throttle": {"count": 5, "retry_after_s": 60}}
        ).raise_for_status()
        assert post(api, event(training.provider_job_id or "")).json()["jobs"] == [training.id]

        [outcome] = pump.run_sent(limit=1)

        assert outcome.startswith("retry in") and pump.sent == []
        job = pump.job(training.id)
        assert job.poked_at is None and job.lease_owner is None
        assert job.next_run_at is not None and job.next_run_at >= clock() + timedelta(seconds=30)


class TestRefused:
    @pytest.mark.parametrize("tamper", [
        pytest.param(lambda b, h: (b, {"content-type": "application/json"}), id="unsigned"),
        pytest.param(lambda b, h: (b, {**h, "webhook-signature": "v1,AAAA"}),
                     id="wrong-signature"),
        pytest.param(lambda b, h: (b, {**h, "webhook-signature": "garbage"}),
                     id="malformed-signature"),
        pytest.param(lambda b, h: (b.replace(b"succeeded", b"cancelled"), h),
                     id="body-changed-after-signing"),
    ])
    def test_an_unverified_request_is_401_and_changes_nothing(
            self, api: TestClient, pump: Pump, training: Job, tamper: Any) -> None:
        body, headers = tamper(*event(training.provider_job_id or ""))

        answer = api.post("/webhooks/openai", content=body, headers=headers)

        assert answer.status_code == 401
        assert pump.sent == [] and pump.job(training.id) == training

    @pytest.mark.parametrize(("secret", "age_s"), [
        pytest.param(OTHER_SECRET, 0, id="other-secret"),
        pytest.param(SECRET, 600, id="stale"),
        pytest.param(SECRET, -600, id="from-the-future"),
    ])
    def test_a_stale_or_foreign_signature_is_401(self, api: TestClient, pump: Pump,
                                                 training: Job, secret: str,
                                                 age_s: int) -> None:
        at = datetime.now(UTC) - timedelta(seconds=age_s)

        answer = post(api, event(training.provider_job_id or "", secret=secret, at=at))

        assert answer.status_code == 401
        assert pump.sent == [] and pump.job(training.id) == training

    def test_without_a_signing_secret_nothing_is_verified(self, api: TestClient,
                                                          pump: Pump, training: Job) -> None:
        api.app.state.api.settings = pump.settings.model_copy(  # type: ignore[attr-defined]
            update={"openai_webhook_secret": None})

        answer = post(api, event(training.provider_job_id or ""))

        assert answer.status_code == 503
        assert "OPENAI_WEBHOOK_SECRET is not set" in answer.json()["detail"]
        assert pump.sent == []

    def test_a_provider_without_webhooks_and_an_unknown_one_are_404(
            self, api: TestClient) -> None:
        assert post(api, event("x"), provider="dashscope").status_code == 404
        assert post(api, event("x"), provider="nobody").status_code == 404

    def test_a_body_over_64_kib_is_413(self, api: TestClient) -> None:
        assert api.post("/webhooks/openai", content=b"x" * 70_000).status_code == 413


def test_healthz(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
