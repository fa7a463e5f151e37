"""The only code that writes a job's state.

A transition is a compare-and-set on the job's (state, version) plus an appended history
row and the webhook events it causes (notify/outbox.py), in the caller's transaction. If
the job is no longer where the caller thought, the UPDATE matches nothing,
``StaleTransition`` is raised, and nothing is written. The caller commits; rolling back
undoes the state change, its history row and its events together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from orchestrator.db.models import HISTORY, JOBS, Job, JobTransition
from orchestrator.db.queries import DB, connection
from orchestrator.db.types import utcnow
from orchestrator.errors import IllegalTransition, StaleTransition
from orchestrator.notify import outbox
from orchestrator.states import TERMINAL, State, can_move

#: Job columns a transition may set besides the state itself.
WRITABLE = frozenset({
    "dataset", "training_blob", "validation_blob", "provider_status", "provider_job_id",
    "training_file_id", "validation_file_id", "fine_tuned_model", "deployed_model", "result",
    "error", "failure_kind", "next_run_at", "lease_owner", "lease_expires_at", "attempts",
    "last_error",
})


def insert_job(session: Session, job: Job, *, reason: str, now: datetime | None = None) -> None:
    """Store a new job in ``queued`` with its first history row (seq 1)."""
    now = now or utcnow()
    job.state, job.version = State.QUEUED.value, 1
    job.created_at = job.updated_at = now
    job.next_run_at = now
    session.add(job)
    session.flush()
    session.add(JobTransition(job_id=job.id, seq=1, from_state=None, to_state=State.QUEUED.value,
                              reason=reason, at=now))
    outbox.write(session.connection(), outbox.Change(job.id, 1, None, State.QUEUED, reason, {},
                                                     {}, now), job.spec.get("notify"))


def transition(
    db: DB,
    job_id: str,
    *,
    source: State,
    target: State,
    version: int,
    reason: str,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
    lease: str | None = None,
    wake: list[outbox.Wake] | None = None,
    **fields: Any,
) -> int:
    """Move ``job_id`` from ``source`` (at ``version``) to ``target``; return the new version.

    With ``lease``, the move also requires that lease to still hold the job, so a step
    whose lease was revoked (rescued, or cleared by a cancel) cannot move it. With ``wake``,
    the webhook events the move causes are leased and listed there for the caller to send
    once it has committed (otherwise the scheduler sends them at its next tick).

    A move into ``failed`` must set ``failure_kind`` (the table's CHECK holds it to that).

    Raises:
        IllegalTransition: ``source → target`` is not in states.TRANSITIONS.
        StaleTransition: the job is not in ``source`` at ``version`` (under ``lease``) any more.
    """
    if not can_move(source, target):
        raise IllegalTransition(f"job {job_id}: {source} → {target} is not an allowed transition")
    unknown = set(fields) - WRITABLE
    if unknown:
        raise ValueError(f"transition cannot set {sorted(unknown)}")
    now = now or utcnow()
    values: dict[str, Any] = {**fields, "state": target.value, "version": JOBS.c.version + 1,
                              "updated_at": now}
    if target in TERMINAL:
        values.update(next_run_at=None, lease_owner=None, lease_expires_at=None, poked_at=None)
        if source not in TERMINAL:  # a deployment event on a finished job keeps finished_at
            values["finished_at"] = now
    elif source in TERMINAL:  # `tunectl deploy` re-opens a finished job
        values["finished_at"] = None
    if source is State.FAILED and target is not State.FAILED:
        values["failure_kind"] = None  # a job is classified only while it is failed
    guard = [JOBS.c.id == job_id, JOBS.c.state == source.value, JOBS.c.version == version]
    if lease is not None:
        guard.append(JOBS.c.lease_owner == lease)
    # Core statements on the session's connection: the ORM's bookkeeping (synchronizing the
    # identity map) would cost more than the statements themselves on this hot path.
    conn = connection(db)
    moved = conn.execute(
        sa.update(JOBS).where(*guard).values(**values)
        .returning(JOBS.c.version, JOBS.c.spec["notify"])
    ).one_or_none()
    if moved is None:
        held = f" under lease {lease}" if lease else ""
        raise StaleTransition(f"job {job_id} is no longer {source} at version {version}{held}; "
                              "nothing was written")
    new_version, notify = int(moved[0]), moved[1]
    conn.execute(sa.insert(HISTORY).values(
        job_id=job_id, seq=new_version, from_state=source.value, to_state=target.value,
        provider_status=fields.get("provider_status"), reason=reason, data=data or {}, at=now,
    ))
    outbox.write(conn, outbox.Change(job_id, new_version, source, target, reason, data or {},
                                     fields, now), notify, wake)
    return new_version
