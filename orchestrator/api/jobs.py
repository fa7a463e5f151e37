"""The job routes: submit (a JSON or YAML spec naming uploaded datasets, or a multipart
request carrying them), list, get, history, provider events, cancel; and dataset uploads.

Each route runs the CLI's operation (orchestrator/jobs.py) for the token's project, so the
API refuses exactly what the CLI refuses, with the same one-line reasons.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile

from orchestrator import jobs as job_ops
from orchestrator.api.auth import Caller, caller
from orchestrator.api.events import Busy, ProviderEvents
from orchestrator.api.problems import responses
from orchestrator.blobs import BlobStore
from orchestrator.config import PROJECT_PATTERN, Settings
from orchestrator.db import deployments as deployment_rows
from orchestrator.db.engine import session_scope
from orchestrator.db.models import UploadedDataset
from orchestrator.documents import DeploymentDoc, EventDoc, JobDoc, TransitionDoc
from orchestrator.errors import DatasetError, SpecError
from orchestrator.specs import JobSpec, checked_plugin, parse_spec, read_document
from orchestrator.states import State

router = APIRouter(prefix="/v1", tags=["jobs"])
_YAML = ("application/yaml", "application/x-yaml", "text/yaml")
_SOURCE = "request body"


@dataclass
class ApiState:
    """What the routes work with (``app.state.api``)."""

    settings: Settings
    engine: sa.Engine
    blobs: BlobStore
    events: ProviderEvents


def api_state(request: Request) -> ApiState:
    """The app's state (a dependency)."""
    state: ApiState = request.app.state.api
    return state


State_ = Annotated[ApiState, Depends(api_state)]
Who = Annotated[Caller, Depends(caller)]
#: No NUL characters: no database stores one in text (RequestGuard refuses them).
TEXT = r"^[^\x00]*$"
Label = Annotated[str, StringConstraints(
    pattern=r"^[a-z0-9][a-z0-9_.\-/]{0,62}=[^\x00]{0,256}$")]
JobId = Annotated[str, Path(min_length=1, max_length=40, pattern=TEXT,
                            description="A job id (job_…).")]


def _instant(value: Any) -> Any:
    """An ISO 8601 time with a zone, as a UTC datetime. Pydantic alone would also take a
    number (as Unix seconds), and a time that UTC puts outside the years 1 to 9999, which
    no database column holds."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("datetime_format", "Input should be an ISO 8601 time with "
                                  "a time zone, like 2026-01-31T12:00:00Z") from None
    if parsed.tzinfo is None:
        return parsed  # AwareDatetime refuses it, saying so
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "Input should be a time within the years "
                                  "1 to 9999 once in UTC") from None


#: A point in time in a query: ISO 8601 with a time zone, within the years 1 to 9999 in UTC.
Instant = Annotated[AwareDatetime, BeforeValidator(_instant)]


class ApiJobSpec(JobSpec):
    """A job spec as the API takes it: datasets are named by the ``sha256:<hex>`` that
    POST /v1/datasets returned (a multipart submit sends them instead)."""

    training_file: str = Field(pattern=job_ops.REFERENCE.pattern)  # type: ignore[assignment]
    validation_file: str | None = Field(default=None,  # type: ignore[assignment]
                                        pattern=job_ops.REFERENCE.pattern)


class SubmittedDoc(JobDoc):
    """The job a submit created, or the existing one its idempotency key named."""

    created: bool


class JobDetailDoc(JobDoc):
    """A job and its deployments."""

    deployments: list[DeploymentDoc]


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next
    (null on the last page)."""

    jobs: list[JobDoc]
    next_cursor: str | None


class DatasetDoc(BaseModel):
    """A stored dataset, to name in a spec as ``sha256:<hex>``."""

    sha256: str
    bytes: int
    reference: str


_MULTIPART = {
    "type": "object", "required": ["spec", "training_file"],
    "properties": {
        "spec": {"type": "string", "description": "The job spec, JSON or YAML; its "
                 "training_file and validation_file are replaced by the parts below."},
        "training_file": {"type": "string", "format": "binary"},
        "validation_file": {"type": "string", "format": "binary"},
    },
}
_SPEC_REF = {"$ref": "#/components/schemas/ApiJobSpec"}
SUBMIT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _SPEC_REF},
    "application/yaml": {"schema": _SPEC_REF},
    "multipart/form-data": {"schema": _MULTIPART},
}}}


@router.post("/jobs", status_code=201, response_model=SubmittedDoc,
             openapi_extra=SUBMIT_BODY, summary="Submit a job",
             responses={200: {"model": SubmittedDoc, "description": "already submitted: the "
                              "job with the same idempotency key and spec"},
                        **responses(400, 401, 409, 413, 415, 503)})
async def submit(request: Request, state: State_, who: Who) -> JSONResponse:
    """Submit a job spec: JSON or YAML naming datasets uploaded with POST /v1/datasets, or
    multipart with the spec and its datasets. The same idempotency key returns the job it
    created (200) instead of a new one (201)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        spec, datasets = await _multipart(request, state, who)
    elif content_type == "application/json" or content_type in _YAML:
        data, lines = read_document(await request.body(), _SOURCE,
                                    as_json=content_type == "application/json")
        spec, datasets = parse_spec(data, _SOURCE, lines), None
    else:
        raise HTTPException(415, f"Content-Type {content_type or 'missing'}: send the spec as "
                                 "application/json, application/yaml or multipart/form-data")
    result = await run_in_threadpool(_submit, state, who, spec, datasets)
    doc = SubmittedDoc(**JobDoc.of(result.job).model_dump(), created=result.created)
    return JSONResponse(doc.doc(), status_code=201 if result.created else 200)


async def _multipart(request: Request, state: ApiState,
                     who: Caller) -> tuple[JobSpec, job_ops.Datasets]:
    """The spec and its datasets from a multipart submit. The spec is parsed and checked
    against its provider before a dataset is stored, so a refused submit stores nothing."""
    async with request.form(max_files=2, max_fields=1) as form:
        text, training, validation = (form.get("spec"), form.get("training_file"),
                                      form.get("validation_file"))
        if not isinstance(text, str):
            raise SpecError(_SOURCE, "spec", "is required: a form field holding the spec")
        if not isinstance(training, UploadFile):
            raise SpecError(_SOURCE, "training_file", "is required: a file part holding the "
                            "training dataset")
        if validation is not None and not isinstance(validation, UploadFile):
            raise SpecError(_SOURCE, "validation_file", "must be a file part")
        data, lines = read_document(text.encode(), _SOURCE,
                                    as_json=text.lstrip().startswith("{"))
        if not isinstance(data, dict):
            raise SpecError(_SOURCE, "spec", "a spec must be a mapping of fields (name, "
                            "provider, …)")
        # The parts replace whatever the spec names; they are checked once stored.
        data["training_file"] = _PART
        if validation:
            data["validation_file"] = _PART
        else:
            data.pop("validation_file", None)
        spec = parse_spec(data, _SOURCE, lines)
        checked_plugin(spec, _SOURCE)
        stored = job_ops.Datasets(await _store(state, who, training, "training_file"),
                                  await _store(state, who, validation, "validation_file")
                                  if validation else None)
    names = {"training_file": PurePath(f"sha256:{stored.training}")}
    if stored.validation:
        names["validation_file"] = PurePath(f"sha256:{stored.validation}")
    return spec.model_copy(update=names), stored


#: What a multipart spec's dataset fields hold while they are checked.
_PART = "(the file part)"


async def _store(state: ApiState, who: Caller, upload: UploadFile, label: str) -> str:
    sha = await run_in_threadpool(state.blobs.put_stream, upload.file, label,
                                  limit=state.settings.api_max_upload_bytes)
    size = state.blobs.path(sha).stat().st_size
    await run_in_threadpool(_record_upload, state.engine, who.project, sha, size)
    return sha


def _record_upload(engine: sa.Engine, project: str, sha: str, size: int) -> None:
    try:
        with session_scope(engine) as session:
            if session.get(UploadedDataset, (project, sha)) is None:
                session.add(UploadedDataset(project=project, sha256=sha, bytes=size))
    except sa.exc.IntegrityError:
        pass  # a concurrent upload of the same dataset recorded it


def _submit(state: ApiState, who: Caller, spec: JobSpec,
            datasets: job_ops.Datasets | None) -> job_ops.Submitted:
    if datasets is None:
        def owned(sha: str) -> bool:
            with session_scope(state.engine) as session:
                return session.get(UploadedDataset, (who.project, sha)) is not None

        datasets = job_ops.referenced(state.blobs, spec, _SOURCE, owned)
    return job_ops.submit(state.engine, state.blobs, spec, source=f"the API ({who.name})",
                          project=who.project, datasets=datasets, settings=state.settings)


@router.post("/datasets", status_code=201, response_model=DatasetDoc,
             summary="Upload a dataset",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                         "minLength": 1}}}}},
             responses=responses(400, 401, 413, 503))
async def upload_dataset(request: Request, state: State_, who: Who) -> DatasetDoc:
    """Store a dataset (the request body, as is) for this token's project; a spec then
    names it by the returned ``reference``. Uploading the same bytes again is harmless."""
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            spool.write(chunk)
        if size == 0:
            raise DatasetError(f"{_SOURCE}: the dataset is empty; send the file's bytes")
        spool.seek(0)
        sha = await run_in_threadpool(state.blobs.put_stream, spool, _SOURCE,  # type: ignore[arg-type]
                                      limit=state.settings.api_max_upload_bytes)
    await run_in_threadpool(_record_upload, state.engine, who.project, sha, size)
    return DatasetDoc(sha256=sha, bytes=size, reference=f"sha256:{sha}")


@router.get("/jobs", response_model=JobPage, summary="List jobs",
            responses=responses(400, 401, 403, 422))
def list_jobs(
    state: State_, who: Who,
    job_state: Annotated[State | None, Query(alias="state")] = None,
    provider: Annotated[str | None, Query(max_length=40, pattern=TEXT)] = None,
    label: Annotated[list[Label] | None, Query(
        description="key=value; repeat it to require several labels")] = None,
    created_after: Annotated[Instant | None, Query(
        description="Only jobs created at or after this time (with a time zone).")] = None,
    created_before: Annotated[Instant | None, Query(
        description="Only jobs created before this time (with a time zone).")] = None,
    project: Annotated[str | None, Query(
        pattern=PROJECT_PATTERN, description="Admin tokens: only this project's jobs.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=400, pattern=r"^[A-Za-z0-9_-]+$",
                                        description="The next_cursor of the page before.")
                      ] = None,
) -> JobPage:
    """The token's project's jobs, newest first, filtered, a page at a time."""
    if project is not None and not who.admin and project != who.project:
        raise HTTPException(403, f"token {who.name!r} sees only project {who.project!r}")
    where = job_ops.JobFilter(
        project=project if project is not None else who.scope,
        state=job_state.value if job_state else None, provider=provider,
        labels=tuple(job_ops.parse_label(text) for text in label or ()),
        created_after=created_after, created_before=created_before)
    with session_scope(state.engine) as session:
        page = job_ops.list_jobs(session, where, limit=limit, cursor=cursor)
    return JobPage(jobs=[JobDoc.of(j) for j in page.jobs], next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}", response_model=JobDetailDoc, summary="Get a job",
            responses=responses(401, 404, 422))
def get_job(job_id: JobId, state: State_, who: Who) -> JobDetailDoc:
    """A job with its deployments."""
    with session_scope(state.engine) as session:
        job = job_ops.get(session, job_id, who.scope)
        deployments = deployment_rows.for_job(session, job_id)
    return JobDetailDoc(**JobDoc.of(job).model_dump(),
                        deployments=[DeploymentDoc.of(d) for d in deployments])


@router.get("/jobs/{job_id}/history", response_model=list[TransitionDoc],
            summary="A job's transition history", responses=responses(401, 404, 422))
def job_history(job_id: JobId, state: State_, who: Who) -> list[TransitionDoc]:
    """Every state change of the job, oldest first (``seq`` is gapless)."""
    with session_scope(state.engine) as session:
        job_ops.get(session, job_id, who.scope)
        return [TransitionDoc.of(t) for t in job_ops.history(session, job_id)]


@router.get("/jobs/{job_id}/events", response_model=list[EventDoc],
            summary="The provider job's events", responses=responses(401, 404, 422, 502, 503))
def job_events(job_id: JobId, state: State_, who: Who,
               limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[EventDoc]:
    """The provider job's newest events, fetched from the provider (empty before the
    provider job exists); an answer is kept a few seconds, and too many fetches at once
    are a 503 with Retry-After (docs/api.md)."""
    with session_scope(state.engine) as session:
        job = job_ops.get(session, job_id, who.scope)
    try:
        events = state.events.fetch(job, limit)
    except Busy as exc:
        raise HTTPException(503, str(exc),
                            headers={"Retry-After": str(Busy.retry_after_s)}) from None
    return [EventDoc.of(e) for e in events]


@router.post("/jobs/{job_id}/cancel", response_model=JobDoc, summary="Cancel a job",
             responses=responses(401, 404, 409, 422))
def cancel_job(job_id: JobId, state: State_, who: Who) -> JobDoc:
    """Cancel the job (the provider job too, if one exists); 409 once it is past that."""
    return JobDoc.of(job_ops.cancel(state.engine, job_id, project=who.scope))

