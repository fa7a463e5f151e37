"""The scheduler: claims, dispatches, rescues and gives up, from the database alone."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.db import queries
from orchestrator.db.models import JOBS
from orchestrator.scheduler import JITTER_SHARE, MIN_PAUSE_S, Scheduler
from orchestrator.states import STEP_FOR_STATE
from tests.helpers import Clock, Pump, make_spec


@pytest.fixture
def pump(settings: Settings, engine: sa.Engine) -> Pump:
    return Pump(settings, engine, Clock())


def test_due_jobs_are_dispatched_once_in_batches(pump: Pump, tmp_path: Path) -> None:
    pump.settings.scheduler_batch = 3
    ids = {pump.submit(make_spec(tmp_path, name=f"j{i}")).id for i in range(7)}

    report = pump.scheduler().tick()
    again = pump.scheduler().tick()

    assert report.dispatched == 7 and again.dispatched == 0
    assert {job_id for _, job_id, _ in pump.sent} == ids
    assert {step for step, _, _ in pump.sent} == {"validate"}


def down(step: str, job_id: str, lease: str) -> None:
    raise ConnectionError("broker unreachable")


def test_a_broker_outage_frees_the_leases_at_once_due_a_tick_later(pump: Pump,
                                                                   tmp_path: Path) -> None:
    """Freed at once (not at lease expiry), but due a tick later: due now, a scheduler
    whose broker is down would wake again at once and spin."""
    ids = [pump.submit(make_spec(tmp_path, name=f"j{i}")).id for i in range(3)]
    failing = Scheduler(pump.settings, pump.engine, down, now=pump.clock)

    assert failing.tick().dispatched == 0
    for job_id in ids:
        job = pump.job(job_id)
        assert job.lease_owner is None
        assert job.next_run_at == pump.clock() + timedelta(seconds=pump.settings.scheduler_tick_s)
    assert failing.pause() >= pump.settings.scheduler_tick_s
    assert pump.scheduler().tick().dispatched == 0
    pump.clock.advance(pump.settings.scheduler_tick_s)
    assert pump.scheduler().tick().dispatched == 3


def test_a_rescued_job_is_late_from_its_lease_expiry_not_from_before_it(
        pump: Pump, tmp_path: Path) -> None:
    """Its next_run_at was the time it was first due: measured from there, every rescued
    job showed about a whole lease of pickup lag."""
    from prometheus_client import REGISTRY

    def lag_sum() -> float:
        return REGISTRY.get_sample_value("tunectl_scheduler_pickup_lag_seconds_sum") or 0.0

    job_id = pump.submit(make_spec(tmp_path)).id
    pump.scheduler().tick()
    pump.sent.clear()  # the message is lost: the lease expires
    pump.clock.advance(pump.settings.lease_s + 7)
    before = lag_sum()
    pump.scheduler().tick()

    assert [job for _, job, _ in pump.sent] == [job_id]
    assert lag_sum() - before == pytest.approx(7, abs=0.01)


def test_leases_are_rescued_on_whole_ticks_only(pump: Pump, tmp_path: Path) -> None:
    job_id = pump.submit(make_spec(tmp_path)).id
    pump.scheduler().tick()
    pump.clock.advance(pump.settings.lease_s + 1)  # its step message was lost

    assert pump.scheduler().tick(jobs_only=True).rescued == 0
    assert pump.job(job_id).lease_owner is not None
    assert pump.scheduler().tick().rescued == 1


def test_two_schedulers_never_dispatch_the_same_job(pump: Pump, tmp_path: Path) -> None:
    pump.settings.scheduler_batch = 5
    for i in range(60):
        pump.submit(make_spec(tmp_path, name=f"j{i}"))
    lock = threading.Lock()

    def dispatch(step: str, job_id: str, lease: str) -> None:
        with lock:
            pump.sent.append((step, job_id, lease))

    def run() -> None:
        for _ in range(10):
            Scheduler(pump.settings, pump.engine, dispatch, now=pump.clock).tick()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job_ids = [job_id for _, job_id, _ in pump.sent]
    assert len(job_ids) == len(set(job_ids)) == 60


def take_up_and_die(pump: Pump) -> None:
    """A worker starts each sent step and dies before finishing it."""
    for step, job_id, lease in pump.sent:
        states = [s.value for s, name in STEP_FOR_STATE.items() if name == step]
        with pump.engine.begin() as conn:
            queries.take_up(conn, job_id, lease=lease, states=states, now=pump.clock(),
                            lease_s=pump.settings.lease_s)
    pump.sent.clear()


def test_a_job_whose_worker_keeps_dying_fails_after_max_attempts(pump: Pump,
                                                                 tmp_path: Path) -> None:
    job_id = pump.submit(make_spec(tmp_path)).id
    for _ in range(pump.settings.max_attempts):
        assert pump.scheduler().tick().dispatched == 1
        take_up_and_die(pump)
        pump.clock.advance(pump.settings.lease_s + 1)
    report = pump.scheduler().tick()

    job = pump.job(job_id)
    assert report.gave_up == 1 and job.state == "failed"
    assert job.failure_kind == "gave_up" and job.error is not None
    assert job.error.startswith("gave up after 5 attempts at the validate step; last error: "
                                "the lease of lease_")
    assert "(worker lost or task message lost)" in job.error


def test_lost_messages_never_count_against_a_job(pump: Pump, tmp_path: Path) -> None:
    """A broker that loses the step message again and again (flushed, restarted) costs the
    job time, not attempts: it is never failed for steps that never ran."""
    job_id = pump.submit(make_spec(tmp_path)).id
    for _ in range(pump.settings.max_attempts * 2):
        pump.scheduler().tick()
        pump.sent.clear()
        pump.clock.advance(pump.settings.lease_s + 1)

    job = pump.job(job_id)
    assert (job.state, job.attempts) == ("queued", 0)


class TestDeployments:
    """The scheduler's second duty: deployments that must be deleted (TTL, undeploy, or a
    job that no longer wants them), claimed under a lease like jobs."""

    def deployed(self, pump: Pump, tmp_path: Path) -> tuple[str, str]:
        """A succeeded DashScope job with a serving deployment whose TTL is one hour."""
        from orchestrator.providers.dashscope.emulator import Scenario as DashScope
        from tests.helpers import in_process_emulator, make_dashscope_spec

        self.emulator = in_process_emulator(pump.clock, dashscope=DashScope(
            job_duration_s=2, deployment_duration_s=2))
        self.http = self.emulator.__enter__()
        job = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
        assert job.deployed_model is not None
        return job.id, job.deployed_model

    def teardown_method(self) -> None:
        if getattr(self, "emulator", None) is not None:
            self.emulator.__exit__(None, None, None)

    def test_nothing_is_sent_before_the_ttl_and_one_undeploy_after(
            self, pump: Pump, tmp_path: Path) -> None:
        self.deployed(pump, tmp_path)

        before = pump.scheduler().tick()
        pump.clock.advance(3600)
        after = pump.scheduler().tick()
        again = pump.scheduler().tick()

        assert before.undeploying == 0
        assert after.undeploying == 1 and again.undeploying == 0  # leased meanwhile
        assert [step for step, _, _ in pump.sent] == ["undeploy"]

    def test_a_broker_outage_frees_the_deployment_lease_at_once(self, pump: Pump,
                                                                tmp_path: Path) -> None:
        self.deployed(pump, tmp_path)
        pump.clock.advance(3600)

        failing = Scheduler(pump.settings, pump.engine, down, now=pump.clock)
        assert failing.tick().undeploying == 0
        pump.clock.advance(pump.settings.scheduler_tick_s)
        assert pump.scheduler().tick().undeploying == 1

    def test_a_lost_undeploy_message_is_sent_again_after_its_lease(self, pump: Pump,
                                                                   tmp_path: Path) -> None:
        job_id, deployed = self.deployed(pump, tmp_path)
        pump.clock.advance(3600)
        pump.scheduler().tick()
        pump.sent.clear()  # lost with a flushed broker

        pump.clock.advance(pump.settings.lease_s + 1)
        resent = pump.scheduler().tick()
        pump.run_sent()

        assert resent.undeploying == 1
        assert pump.job(job_id).deployed_model is None
        assert self.http.get(f"/dashscope/api/v1/deployments/{deployed}").json()["output"][
            "status"] == "DELETING"

    def test_an_undeploy_that_fails_is_retried_with_backoff_never_given_up(
            self, pump: Pump, tmp_path: Path) -> None:
        from orchestrator.db import deployments as rows
        from orchestrator.db.engine import session_scope

        job_id, _ = self.deployed(pump, tmp_path)
        self.http.put("/dashscope/_emulator/scenario", json={
            "server_errors": {"count": 2 * pump.settings.max_attempts, "status": 500,
                              "routes": "^/api/v1/deployments/", "methods": ["DELETE"]}})
        pump.clock.advance(3600)
        for _ in range(3 * pump.settings.max_attempts):
            pump.scheduler().tick()
            pump.run_sent()
            pump.clock.advance(pump.settings.retry_cap_s)
        with session_scope(pump.engine) as session:
            [deployment] = rows.for_job(session, job_id)

        assert deployment.state == "deleted"
        assert deployment.attempts > pump.settings.max_attempts
        assert pump.job(job_id).state == "succeeded"


class TestPause:
    def test_the_scheduler_wakes_when_the_next_job_falls_due_not_a_tick_later(
            self, pump: Pump, tmp_path: Path) -> None:
        tick = 2.0
        scheduler = Scheduler(pump.settings.model_copy(update={"scheduler_tick_s": tick}),
                              pump.engine, pump.dispatch, now=pump.clock)

        def jittered(pause: float) -> bool:
            return pause <= scheduler.pause() <= pause + JITTER_SHARE * tick

        assert jittered(tick)  # nothing to do: a whole tick
        job = pump.submit(make_spec(tmp_path))
        assert jittered(MIN_PAUSE_S)  # due already

        with pump.engine.begin() as conn:
            conn.execute(sa.update(JOBS).where(JOBS.c.id == job.id)
                         .values(next_run_at=pump.clock() + timedelta(seconds=tick / 2)))
        assert jittered(tick / 2)
        with pump.engine.begin() as conn:
            conn.execute(sa.update(JOBS).where(JOBS.c.id == job.id)
                         .values(next_run_at=pump.clock() + timedelta(hours=1)))
        assert jittered(tick)

    def test_schedulers_waking_for_the_same_job_spread_out(self, pump: Pump,
                                                           tmp_path: Path) -> None:
        pump.submit(make_spec(tmp_path))
        pauses = {pump.scheduler().pause() for _ in range(20)}

        assert len(pauses) > 1
