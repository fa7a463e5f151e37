"""Job operations shared by every front door (CLI, HTTP API, queue): submit, cancel, list,
show. Each either completes whole or raises a UserError and writes nothing.

Every job belongs to a project. A caller scoped to a project (an API token) passes it, and
a job of another project is then reported exactly as a job that does not exist; ``None``
(the local CLI, an admin token) sees every project.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from orchestrator.blobs import BlobStore
from orchestrator.config import Settings, get_settings
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job, JobTransition
from orchestrator.db.transition import insert_job, transition
from orchestrator.db.types import new_id, utcnow
from orchestrator.errors import (
    CannotCancel,
    IdempotencyConflict,
    InvalidCursor,
    JobNotFound,
    ProviderError,
    SpecError,
    StaleTransition,
    UserError,
)
from orchestrator.notify import outbox
from orchestrator.providers import registry
from orchestrator.providers.base import RemoteEvent, connect, pinned_options
from orchestrator.providers.http import shared_client
from orchestrator.specs import JobSpec, checked_plugin
from orchestrator.states import CANCEL_DIRECTLY, CANCEL_REMOTELY, TERMINAL, State


@dataclass(frozen=True)
class Datasets:
    """A job's datasets, already in the blob store (by SHA-256)."""

    training: str
    validation: str | None = None


#: A dataset already in the blob store, as a spec sent to the API or the queue names it.
REFERENCE = re.compile(r"^sha256:([0-9a-f]{64})$")


def referenced(blobs: BlobStore, spec: JobSpec, source: str,
               owned: Callable[[str], bool] = lambda _: True) -> Datasets:
    """The stored datasets a spec names as ``sha256:<hex>`` (each must be stored and, for
    an API caller, ``owned`` by its project); raises SpecError naming the field."""
    found: list[str | None] = []
    for field in ("training_file", "validation_file"):
        value = getattr(spec, field)
        if value is None:
            found.append(None)
            continue
        match = REFERENCE.match(str(value))
        if match is None:
            raise SpecError(source, field, "name a dataset already stored as sha256:<hex> "
                            "(POST /v1/datasets returns it), or send the file in a "
                            "multipart/form-data submit")
        sha = match.group(1)
        if not owned(sha) or not blobs.exists(sha):
            raise SpecError(source, field, f"no dataset {value} is stored for this project; "
                            "upload it with POST /v1/datasets first")
        found.append(sha)
    assert found[0] is not None
    return Datasets(found[0], found[1])


@dataclass(frozen=True)
class Submitted:
    """The job a submit created, or the existing one its idempotency key named."""

    job: Job
    created: bool


def submit(engine: sa.Engine, blobs: BlobStore, spec: JobSpec, *, source: str,
           project: str, datasets: Datasets | None = None,
           now: datetime | None = None, settings: Settings | None = None) -> Submitted:
    """Check ``spec`` against its provider (and its webhook targets), store its datasets,
    and queue the job in ``project``.

    The job keeps the provider options its provider pins (``pinned_options``: the spec's,
    completed from ``settings``), so every later step works where the first one did; the
    idempotency digest is of the spec as given.

    Datasets are copied into the blob store first from the spec's paths (content-addressed,
    so a copy left by a failed submit is harmless), unless ``datasets`` names blobs already
    stored; then the job and its first history row are inserted in one transaction.
    """
    settings = settings or get_settings()
    plugin = checked_plugin(spec, source)
    options = pinned_options(plugin, settings, spec.provider_options, source)
    outbox.check_targets(spec.notify, settings, source, project)
    if datasets is None:
        datasets = Datasets(blobs.put_file(spec.training_file),
                            blobs.put_file(spec.validation_file) if spec.validation_file
                            else None)
    training_blob, validation_blob = datasets.training, datasets.validation
    # A field added after jobs were stored is left out while unset, so a spec submitted
    # again with its idempotency key after an upgrade still matches its job's digest.
    unset_new = {"training_type"} if spec.training_type is None else set()
    if not spec.provider_options:
        unset_new.add("provider_options")
    stored = spec.model_dump(mode="json",
                             exclude={"training_file", "validation_file", *unset_new})
    digest = hashlib.sha256(json.dumps(
        {**stored, "training_blob": training_blob, "validation_blob": validation_blob},
        sort_keys=True).encode()).hexdigest()
    if options:
        stored["provider_options"] = options
    job = Job(
        id=new_id("job"), project=project, name=spec.name, provider=spec.provider,
        base_model=spec.base_model, method=spec.method, spec=stored, spec_sha256=digest,
        idempotency_key=spec.idempotency_key, labels=dict(spec.labels),
        training_blob=training_blob, validation_blob=validation_blob,
    )
    if spec.idempotency_key:
        existing = _by_key(engine, project, spec.idempotency_key, digest)
        if existing:
            return Submitted(existing, created=False)
    try:
        with session_scope(engine) as session:
            insert_job(session, job, reason=f"submitted from {source}", now=now)
    except sa.exc.IntegrityError:
        # A concurrent submit with the same idempotency key won the insert.
        existing = _by_key(engine, project, spec.idempotency_key or "", digest)
        if existing is None:
            raise
        return Submitted(existing, created=False)
    return Submitted(job, created=True)


def _by_key(engine: sa.Engine, project: str, key: str, digest: str) -> Job | None:
    with session_scope(engine) as session:
        existing = session.exec(select(Job).where(col(Job.project) == project,
                                                  col(Job.idempotency_key) == key)).first()
    if existing is not None and existing.spec_sha256 != digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} already belongs to job {existing.id} with a different "
            "spec or dataset; use a new key to submit a different job")
    return existing


def get(session: Session, job_id: str, project: str | None = None) -> Job:
    """The job with ``job_id`` (in ``project``, when given); raises JobNotFound."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or (project is not None and job.project != project):
        raise JobNotFound(f"no job {job_id!r}; `tunectl jobs` lists the jobs")
    return job


def history(session: Session, job_id: str) -> list[JobTransition]:
    """A job's transitions, oldest first."""
    return list(session.exec(select(JobTransition).where(col(JobTransition.job_id) == job_id)
                             .order_by(col(JobTransition.seq))))


def provider_events(settings: Settings, job: Job, limit: int = 20) -> list[RemoteEvent]:
    """The provider job's newest events, fetched now (nothing if it was never created);
    a provider failure is a ProviderError naming the provider job."""
    if job.provider_job_id is None:
        return []
    provider = connect(registry.get(job.provider), settings, shared_client(settings),
                       job.spec.get("provider_options"))
    try:
        return provider.list_events(job.provider_job_id, limit)
    except ProviderError as exc:
        raise type(exc)(f"cannot fetch the events of {job.provider_job_id}: {exc.message}",
                        provider=exc.provider, operation=exc.operation, status=exc.status,
                        request_id=exc.request_id, retry_after=exc.retry_after) from exc


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a list shows; every field given must match."""

    project: str | None = None
    state: str | None = None
    provider: str | None = None
    #: Label key → value; a job must carry every one.
    labels: tuple[tuple[str, str], ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class Page:
    """One page of a list, and the cursor of the next (None on the last page)."""

    jobs: list[Job]
    next_cursor: str | None


def parse_label(text: str) -> tuple[str, str]:
    """``key=value`` → (key, value); raises UserError."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"label filter {text!r} must be key=value, e.g. team=support")
    return key, value


def list_jobs(session: Session, where: JobFilter = JobFilter(), *, limit: int = 50,
              cursor: str | None = None) -> Page:
    """The newest jobs first (by created_at, then id), filtered, ``limit`` at a time.

    ``cursor`` is the ``next_cursor`` of the page before: pages never repeat or skip a job,
    even while new jobs arrive (keyset pagination on ix_jobs_project_created).
    """
    query = select(Job).order_by(col(Job.created_at).desc(), col(Job.id).desc())
    if where.project is not None:
        query = query.where(col(Job.project) == where.project)
    if where.state:
        query = query.where(col(Job.state) == where.state)
    if where.provider:
        query = query.where(col(Job.provider) == where.provider)
    for key, value in where.labels:
        query = query.where(col(Job.labels)[key].as_string() == value)
    if where.created_after is not None:
        query = query.where(col(Job.created_at) >= where.created_after)
    if where.created_before is not None:
        query = query.where(col(Job.created_at) < where.created_before)
    if cursor:
        at, job_id = _decode_cursor(cursor)
        query = query.where(sa.or_(col(Job.created_at) < at,
                                   sa.and_(col(Job.created_at) == at, col(Job.id) < job_id)))
    found = list(session.exec(query.limit(limit + 1)))
    if len(found) <= limit:
        return Page(found, None)
    last = found[limit - 1]
    return Page(found[:limit], _encode_cursor(last.created_at, last.id))


def _encode_cursor(at: datetime, job_id: str) -> str:
    raw = json.dumps([at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None or not isinstance(job_id, str):
            raise ValueError(cursor)
        return parsed.astimezone(UTC), job_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidCursor(f"cursor {cursor[:80]!r} is not one this server gave out; "
                            "start again without it") from None


def cancel(engine: sa.Engine, job_id: str, *, project: str | None = None,
           now: datetime | None = None) -> Job:
    """Request a cancel. Before a provider job can exist it is immediate; after, the cancel
    step cancels the provider job. Cancelling a job that is cancelling does nothing."""
    for _ in range(5):
        with session_scope(engine) as session:
            job = get(session, job_id, project)
            state = State(job.state)
            if state in TERMINAL:
                raise CannotCancel(f"job {job_id} already {state}; there is nothing to cancel")
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
                raise CannotCancel(f"job {job_id} is deploying: its training has ended, so it "
                                f"can no longer be cancelled; stop the deployment with "
                                f"`tunectl undeploy {job_id}`")
            else:
                raise CannotCancel(f"job {job_id} is {state}: its training has ended, "
                                "so it can no longer be cancelled")
            try:
                transition(session, job_id, source=state, target=target, version=job.version,
                           reason="cancel requested", now=now, **fields)
            except StaleTransition:
                session.rollback()
                continue  # it moved on while we looked: decide again from its new state
            return get(session, job_id)
    raise CannotCancel(f"job {job_id} kept changing state; try the cancel again")

