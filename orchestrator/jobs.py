"""Job operations shared by every front door (CLI, and later the HTTP API): submit, cancel,
list, show. Each either completes whole or raises a UserError and writes nothing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from orchestrator.blobs import BlobStore
from orchestrator.config import get_settings
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job, JobTransition
from orchestrator.db.transition import insert_job, transition
from orchestrator.db.types import new_id, utcnow
from orchestrator.errors import IdempotencyConflict, JobNotFound, StaleTransition, UserError
from orchestrator.notify import outbox
from orchestrator.specs import JobSpec, checked_plugin
from orchestrator.states import CANCEL_DIRECTLY, CANCEL_REMOTELY, TERMINAL, State


@dataclass(frozen=True)
class Submitted:
    """The job a submit created, or the existing one its idempotency key named."""

    job: Job
    created: bool


def submit(engine: sa.Engine, blobs: BlobStore, spec: JobSpec, *, source: str,
           now: datetime | None = None) -> Submitted:
    """Check ``spec`` against its provider (and its webhook targets), store its datasets,
    and queue the job.

    Datasets are copied into the blob store first (content-addressed, so a copy left by a
    failed submit is harmless), then the job and its first history row are inserted in one
    transaction.
    """
    checked_plugin(spec, source)
    outbox.check_targets(spec.notify, get_settings(), source)
    training_blob = blobs.put_file(spec.training_file)
    validation_blob = blobs.put_file(spec.validation_file) if spec.validation_file else None
    # A field added after jobs were stored is left out while unset, so a spec submitted
    # again with its idempotency key after an upgrade still matches its job's digest.
    unset_new = {"training_type"} if spec.training_type is None else set()
    stored = spec.model_dump(mode="json",
                             exclude={"training_file", "validation_file", *unset_new})
    digest = hashlib.sha256(json.dumps(
        {**stored, "training_blob": training_blob, "validation_blob": validation_blob},
        sort_keys=True).encode()).hexdigest()
    job = Job(
        id=new_id("job"), name=spec.name, provider=spec.provider, base_model=spec.base_model,
        method=spec.method, spec=stored, spec_sha256=digest,
        idempotency_key=spec.idempotency_key, labels=dict(spec.labels),
        training_blob=training_blob, validation_blob=validation_blob,
    )
    if spec.idempotency_key:
        existing = _by_key(engine, spec.idempotency_key, digest)
        if existing:
            return Submitted(existing, created=False)
    try:
        with session_scope(engine) as session:
            insert_job(session, job, reason=f"submitted from {source}", now=now)
    except sa.exc.IntegrityError:
        # A concurrent submit with the same idempotency key won the insert.
        existing = _by_key(engine, spec.idempotency_key or "", digest)
        if existing is None:
            raise
        return Submitted(existing, created=False)
    return Submitted(job, created=True)


def _by_key(engine: sa.Engine, key: str, digest: str) -> Job | None:
    with session_scope(engine) as session:
        existing = session.exec(select(Job).where(col(Job.idempotency_key) == key)).first()
    if existing is not None and existing.spec_sha256 != digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} already belongs to job {existing.id} with a different "
            "spec or dataset; use a new key to submit a different job")
    return existing


def get(session: Session, job_id: str) -> Job:
    """The job with ``job_id``; raises JobNotFound."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}; `tunectl jobs` lists the jobs")
    return job


def history(session: Session, job_id: str) -> list[JobTransition]:
    """A job's transitions, oldest first."""
    return list(session.exec(select(JobTransition).where(col(JobTransition.job_id) == job_id)
                             .order_by(col(JobTransition.seq))))


def list_jobs(session: Session, *, state: str | None = None, provider: str | None = None,
              limit: int = 50) -> list[Job]:
    """The newest jobs first, optionally filtered."""
    query = select(Job).order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(limit)
    if state:
        query = query.where(col(Job.state) == state)
    if provider:
        query = query.where(col(Job.provider) == provider)
    return list(session.exec(query))


def cancel(engine: sa.Engine, job_id: str, *, now: datetime | None = None) -> Job:
    """Request a cancel. Before a provider job can exist it is immediate; after, the cancel
    step cancels the provider job. Cancelling a job that is cancelling does nothing."""
    for _ in range(5):
        with session_scope(engine) as session:
            job = get(session, job_id)
            state = State(job.state)
            if state in TERMINAL:
                raise UserError(f"job {job_id} already {state}; there is nothing to cancel")
            if state is State.CANCELLING:
                return job
            fields: dict[str, Any] = {}
            if state in CANCEL_DIRECTLY:
                target = State.CANCELLED
            elif state in CANCEL_REMOTELY:
                # A step still running keeps its lease: the cancel step runs once it is back,
                # never beside a submit that may be creating the provider job right now.
                target = State.CANCELLING
                fields = {"next_run_at": now or utcnow(), "attempts": 0, "last_error": None}
            elif state is State.DEPLOYING:
                raise UserError(f"job {job_id} is deploying: its training has ended, so it "
                                f"can no longer be cancelled; stop the deployment with "
                                f"`tunectl undeploy {job_id}`")
            else:
                raise UserError(f"job {job_id} is {state}: its training has ended, "
                                "so it can no longer be cancelled")
            try:
                transition(session, job_id, source=state, target=target, version=job.version,
                           reason="cancel requested", now=now, **fields)
            except StaleTransition:
                session.rollback()
                continue  # it moved on while we looked: decide again from its new state
            return get(session, job_id)
    raise UserError(f"job {job_id} kept changing state; try the cancel again")

