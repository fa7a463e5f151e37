"""transition(): the only writer of a job's state."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job, JobTransition
from orchestrator.db.transition import insert_job, transition
from orchestrator.db.types import new_id
from orchestrator.errors import IllegalTransition, StaleTransition
from orchestrator.jobs import get, history
from orchestrator.states import TERMINAL, TRANSITIONS, State

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def new_job(engine: sa.Engine) -> str:
    job = Job(id=new_id("job"), name="t", provider="openai", base_model="m", method="sft",
              spec={}, spec_sha256="0" * 64, training_blob="0" * 64)
    with session_scope(engine) as session:
        insert_job(session, job, reason="test", now=NOW)
    return job.id


def move(engine: sa.Engine, job_id: str, source: State, target: State, version: int,
         **fields: object) -> int:
    if target is State.FAILED and source is not State.FAILED:
        fields.setdefault("failure_kind", "gave_up")  # the table requires one while failed
    with session_scope(engine) as session:
        return transition(session, job_id, source=source, target=target, version=version,
                          reason=f"{source}→{target}", now=NOW, **fields)


def snapshot(engine: sa.Engine, job_id: str) -> tuple[Job, list[JobTransition]]:
    with session_scope(engine) as session:
        return get(session, job_id), history(session, job_id)


class TestTransition:
    def test_a_new_job_is_queued_at_version_one_with_one_history_row(
            self, engine: sa.Engine) -> None:
        job, rows = snapshot(engine, new_job(engine))

        assert (job.state, job.version, job.next_run_at) == ("queued", 1, NOW)
        assert [(r.seq, r.from_state, r.to_state) for r in rows] == [(1, None, "queued")]

    def test_a_move_bumps_the_version_and_appends_the_next_seq(self, engine: sa.Engine) -> None:
        job_id = new_job(engine)

        assert move(engine, job_id, State.QUEUED, State.VALIDATING, 1) == 2
        job, rows = snapshot(engine, job_id)
        assert (job.state, job.version) == ("validating", 2)
        assert [(r.seq, r.from_state, r.to_state) for r in rows][-1] == (2, "queued",
                                                                         "validating")

    def test_an_illegal_move_raises_and_writes_nothing(self, engine: sa.Engine) -> None:
        job_id = new_job(engine)

        with pytest.raises(IllegalTransition):
            move(engine, job_id, State.QUEUED, State.SUCCEEDED, 1)
        job, rows = snapshot(engine, job_id)
        assert (job.state, job.version, len(rows)) == ("queued", 1, 1)

    @pytest.mark.parametrize(("source", "version"), [
        pytest.param(State.VALIDATING, 1, id="wrong-state"),
        pytest.param(State.QUEUED, 7, id="wrong-version"),
    ])
    def test_a_stale_move_raises_and_writes_nothing(self, engine: sa.Engine, source: State,
                                                    version: int) -> None:
        job_id = new_job(engine)

        with pytest.raises(StaleTransition):
            move(engine, job_id, source, State.FAILED, version)
        job, rows = snapshot(engine, job_id)
        assert (job.state, job.version, len(rows)) == ("queued", 1, 1)

    def test_the_loser_of_two_concurrent_moves_writes_nothing(self, engine: sa.Engine) -> None:
        job_id = new_job(engine)
        move(engine, job_id, State.QUEUED, State.CANCELLED, 1)

        with pytest.raises(StaleTransition):
            move(engine, job_id, State.QUEUED, State.VALIDATING, 1)
        job, rows = snapshot(engine, job_id)
        assert job.state == "cancelled"
        assert [r.to_state for r in rows] == ["queued", "cancelled"]

    def test_a_terminal_move_finishes_the_job_and_clears_its_schedule(
            self, engine: sa.Engine) -> None:
        job_id = new_job(engine)
        move(engine, job_id, State.QUEUED, State.VALIDATING, 1, lease_owner="lease_x",
             lease_expires_at=NOW + timedelta(minutes=1))

        move(engine, job_id, State.VALIDATING, State.FAILED, 2, error="bad dataset")
        job, _ = snapshot(engine, job_id)
        assert (job.finished_at, job.next_run_at, job.lease_owner, job.error) == (
            NOW, None, None, "bad dataset")

    def test_a_failed_job_is_classified_until_it_leaves_failed(
            self, engine: sa.Engine) -> None:
        job_id = new_job(engine)
        move(engine, job_id, State.QUEUED, State.FAILED, 1, failure_kind="dataset")
        assert snapshot(engine, job_id)[0].failure_kind == "dataset"

        move(engine, job_id, State.FAILED, State.FAILED, 2)  # a deployment deleted
        assert snapshot(engine, job_id)[0].failure_kind == "dataset"
        with session_scope(engine) as session:  # `tunectl deploy` re-opens it
            transition(session, job_id, source=State.FAILED, target=State.DEPLOYING,
                       version=3, reason="deploy requested", now=NOW)
        assert snapshot(engine, job_id)[0].failure_kind is None

    def test_a_rollback_undoes_the_state_and_its_history_together(
            self, engine: sa.Engine) -> None:
        job_id = new_job(engine)

        with pytest.raises(RuntimeError), session_scope(engine) as session:
            transition(session, job_id, source=State.QUEUED, target=State.VALIDATING,
                       version=1, reason="x", now=NOW)
            raise RuntimeError("crash before commit")
        job, rows = snapshot(engine, job_id)
        assert (job.state, len(rows)) == ("queued", 1)

    def test_a_move_under_a_lease_that_no_longer_holds_the_job_is_stale(
            self, engine: sa.Engine) -> None:
        job_id = new_job(engine)
        move(engine, job_id, State.QUEUED, State.VALIDATING, 1, lease_owner="lease_new",
             lease_expires_at=NOW + timedelta(minutes=1))

        with pytest.raises(StaleTransition, match="under lease lease_old"), \
                session_scope(engine) as session:
            transition(session, job_id, source=State.VALIDATING, target=State.UPLOADING,
                       version=2, reason="x", now=NOW, lease="lease_old")
        assert snapshot(engine, job_id)[0].state == "validating"

    def test_only_known_columns_can_be_set(self, engine: sa.Engine) -> None:
        with pytest.raises(ValueError, match="cannot set"):
            move(engine, new_job(engine), State.QUEUED, State.VALIDATING, 1, finished_at=NOW)


class TestTableInvariants:
    """The CHECK constraints hold even against hand-written SQL."""

    @pytest.mark.parametrize("sql", [
        pytest.param("UPDATE jobs SET state = 'succeeded'", id="terminal-without-finished_at"),
        pytest.param("UPDATE jobs SET state = 'exploded'", id="unknown-state"),
        pytest.param("UPDATE jobs SET lease_owner = 'x'", id="lease-without-expiry"),
        pytest.param("UPDATE jobs SET version = 0", id="version-zero"),
        pytest.param("UPDATE jobs SET state = 'failed', finished_at = updated_at, "
                     "next_run_at = NULL", id="failed-without-a-kind"),
        pytest.param("UPDATE jobs SET state = 'failed', finished_at = updated_at, "
                     "next_run_at = NULL, failure_kind = 'gremlins'", id="unknown-kind"),
        pytest.param("UPDATE jobs SET failure_kind = 'dataset'", id="kind-while-not-failed"),
    ])
    def test_inconsistent_rows_are_refused(self, engine: sa.Engine, sql: str) -> None:
        new_job(engine)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.exec_driver_sql(sql)

    def test_history_seq_is_unique_per_job(self, engine: sa.Engine) -> None:
        job_id = new_job(engine)
        with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
            session.add(JobTransition(job_id=job_id, seq=1, to_state="queued", at=NOW))


class LifecycleMachine(RuleBasedStateMachine):
    """Random moves, legal and not, fresh and stale, against a reference model."""

    engine: sa.Engine

    def __init__(self) -> None:
        super().__init__()
        self.job_id = new_job(self.engine)
        self.state, self.version = State.QUEUED, 1

    @rule(to=st.sampled_from(list(State)), stale=st.booleans())
    def try_move(self, to: State, stale: bool) -> None:
        version = self.version - 1 if stale else self.version
        legal = to in TRANSITIONS[self.state] and not stale
        try:
            new_version = move(self.engine, self.job_id, self.state, to, version)
        except (IllegalTransition, StaleTransition):
            assert not legal
            return
        assert legal
        self.state, self.version = to, new_version

    @invariant()
    def database_matches_the_model(self) -> None:
        job, rows = snapshot(self.engine, self.job_id)
        assert (job.state, job.version) == (self.state.value, self.version)
        assert [r.seq for r in rows] == list(range(1, job.version + 1))
        for before, after in itertools.pairwise(rows):
            assert after.from_state == before.to_state
        assert (job.finished_at is not None) == (self.state in TERMINAL)


def test_random_move_sequences_keep_history_gapless(engine: sa.Engine) -> None:
    LifecycleMachine.engine = engine
    runner = LifecycleMachine.TestCase()
    runner.settings = settings(max_examples=25, stateful_step_count=15, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
    runner.runTest()
