"""The named locking queries: claim, rescue, release."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from orchestrator.db import queries
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job
from orchestrator.db.transition import insert_job
from orchestrator.db.types import new_id
from orchestrator.jobs import get

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


def add_jobs(engine: sa.Engine, n: int, *, due_in_s: float = 0.0) -> list[str]:
    ids = []
    with session_scope(engine) as session:
        for _ in range(n):
            job = Job(id=new_id("job"), name="t", provider="openai", base_model="m",
                      method="sft", spec={}, spec_sha256="0" * 64, training_blob="0" * 64)
            insert_job(session, job, reason="test", now=NOW + timedelta(seconds=due_in_s))
            ids.append(job.id)
    return ids


def claim(engine: sa.Engine, owner: str = "lease_a", *, now: datetime = NOW,
          limit: int = 100) -> list[queries.Claimed]:
    with session_scope(engine) as session:
        return queries.claim_due_jobs(session, owner=owner, now=now, until=now + LEASE,
                                      limit=limit)


def fetch(engine: sa.Engine, job_id: str) -> Job:
    with session_scope(engine) as session:
        return get(session, job_id)


class TestClaimDueJobs:
    def test_claims_due_jobs_in_order(self, engine: sa.Engine) -> None:
        ids = add_jobs(engine, 3)

        claimed = claim(engine, limit=2)
        assert {c.id for c in claimed} == set(sorted(ids)[:2])  # (next_run_at, id) order
        assert all(c.attempts == 0 and c.state == "queued" and c.version == 1 for c in claimed)
        job = fetch(engine, claimed[0].id)
        assert (job.lease_owner, job.lease_expires_at) == ("lease_a", NOW + LEASE)

    def test_skips_jobs_not_yet_due(self, engine: sa.Engine) -> None:
        add_jobs(engine, 2, due_in_s=60)
        assert claim(engine) == []
        assert len(claim(engine, now=NOW + timedelta(seconds=61))) == 2

    def test_does_not_claim_a_leased_job_twice(self, engine: sa.Engine) -> None:
        add_jobs(engine, 2)
        assert len(claim(engine, "lease_a")) == 2
        assert claim(engine, "lease_b") == []

    def test_concurrent_claimers_never_get_the_same_job(self, engine: sa.Engine) -> None:
        total = 200
        add_jobs(engine, total)
        got: list[list[str]] = []
        lock = threading.Lock()

        def claimer(owner: str) -> None:
            for _ in range(40):
                ids = [c.id for c in claim(engine, owner, limit=7)]
                with lock:
                    got.append(ids)

        threads = [threading.Thread(target=claimer, args=(f"lease_{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flat = [i for ids in got for i in ids]
        assert len(flat) == len(set(flat)) == total


class TestRescueExpiredLeases:
    def test_frees_expired_leases_with_a_paper_trail(self, engine: sa.Engine) -> None:
        (job_id,) = add_jobs(engine, 1)
        claim(engine)

        assert queries_rescue(engine, NOW + LEASE - timedelta(seconds=1)) == []
        assert queries_rescue(engine, NOW + LEASE + timedelta(seconds=1)) == [
            (job_id, "queued", 0)]
        job = fetch(engine, job_id)
        assert job.lease_owner is None
        assert job.last_error is not None and "lease of lease_a expired" in job.last_error

    @pytest.mark.parametrize(("started", "attempts"), [
        pytest.param(False, 0, id="message-lost-before-the-step-started"),
        pytest.param(True, 1, id="worker-died-during-the-step"),
    ])
    def test_a_rescued_job_is_claimable_again_counting_only_started_steps(
            self, engine: sa.Engine, started: bool, attempts: int) -> None:
        (job_id,) = add_jobs(engine, 1)
        claim(engine)
        if started:
            with engine.begin() as conn:
                queries.take_up(conn, job_id, lease="lease_a", states=["queued"], now=NOW,
                                lease_s=LEASE.total_seconds())
        later = NOW + LEASE + timedelta(seconds=1)
        queries_rescue(engine, later)

        (again,) = claim(engine, "lease_b", now=later)
        assert again.attempts == attempts


def queries_rescue(engine: sa.Engine, now: datetime) -> list[tuple[str, str, int]]:
    with session_scope(engine) as session:
        return queries.rescue_expired_leases(session, now=now)


class TestReleaseLease:
    def test_only_the_lease_holder_can_release(self, engine: sa.Engine) -> None:
        (job_id,) = add_jobs(engine, 1)
        claim(engine, "lease_a")
        later = NOW + timedelta(seconds=30)

        with session_scope(engine) as session:
            assert not queries.release_lease(session, job_id, lease="lease_b", next_run_at=later)
            assert queries.release_lease(session, job_id, lease="lease_a", next_run_at=later,
                                         attempts=0, provider_status="running")
        job = fetch(engine, job_id)
        assert (job.lease_owner, job.next_run_at, job.attempts, job.provider_status) == (
            None, later, 0, "running")


class TestTakeUp:
    def test_a_fresh_lease_is_kept_and_the_attempt_counted(self, engine: sa.Engine) -> None:
        (job_id,) = add_jobs(engine, 1)
        claim(engine, "lease_a")
        soon = NOW + timedelta(seconds=10)  # under 10 % of the 5 min lease has gone

        with engine.begin() as conn:
            job = queries.take_up(conn, job_id, lease="lease_a", states=["queued"], now=soon,
                                  lease_s=LEASE.total_seconds())
        assert job is not None and job.id == job_id and job.attempts == 1
        assert fetch(engine, job_id).lease_expires_at == NOW + LEASE

    def test_a_lease_whose_message_waited_is_renewed_to_a_whole_one(
            self, engine: sa.Engine) -> None:
        (job_id,) = add_jobs(engine, 1)
        claim(engine, "lease_a")
        later = NOW + timedelta(minutes=4)

        with engine.begin() as conn:
            job = queries.take_up(conn, job_id, lease="lease_a", states=["queued"], now=later,
                                  lease_s=LEASE.total_seconds())
        assert job is not None and job.lease_expires_at == later + LEASE
        assert fetch(engine, job_id).lease_expires_at == later + LEASE

    def test_a_step_a_providers_webhook_caused_is_not_counted(
            self, engine: sa.Engine) -> None:
        (job_id,) = add_jobs(engine, 1)
        lease = queries.poke_lease()
        claim(engine, lease)

        with engine.begin() as conn:
            job = queries.take_up(conn, job_id, lease=lease, states=["queued"], now=NOW,
                                  lease_s=LEASE.total_seconds())
        assert job is not None and job.attempts == 0

    @pytest.mark.parametrize(("lease", "states", "after"), [
        pytest.param("lease_b", ["queued"], 1, id="someone-elses-lease"),
        pytest.param("lease_a", ["training"], 1, id="state-moved-on"),
        pytest.param("lease_a", ["queued"], 301, id="lease-already-expired"),
    ])
    def test_a_stale_or_expired_lease_is_refused(self, engine: sa.Engine, lease: str,
                                                states: list[str], after: int) -> None:
        (job_id,) = add_jobs(engine, 1)
        claim(engine, "lease_a")
        now = NOW + timedelta(seconds=after)

        with engine.begin() as conn:
            assert queries.take_up(conn, job_id, lease=lease, states=states, now=now,
                                   lease_s=LEASE.total_seconds()) is None
        assert fetch(engine, job_id).lease_expires_at == NOW + LEASE
