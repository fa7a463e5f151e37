"""The JSON documents of jobs, their history, deployments, provider events and webhook
deliveries, as every front door gives them: ``tunectl … --json`` prints them and the HTTP
API returns them (its OpenAPI schema is these models), so a script reads the same fields
either way."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.db.models import (
    Deployment,
    Job,
    JobTransition,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from orchestrator.db.types import utcnow
from orchestrator.providers.base import RemoteEvent


def iso(value: datetime | None) -> str | None:
    """An aware datetime as ISO 8601 (None stays None)."""
    return value.isoformat() if value else None


class _Document(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    def doc(self) -> dict[str, Any]:
        """The document as plain JSON data."""
        return self.model_dump(mode="json", by_alias=True)


class TransitionDoc(_Document):
    """One row of a job's history."""

    seq: int
    from_: str | None = Field(alias="from")
    to: str
    provider_status: str | None
    reason: str | None
    data: dict[str, Any]
    at: str

    @classmethod
    def of(cls, t: JobTransition) -> TransitionDoc:
        return cls(seq=t.seq, from_=t.from_state, to=t.to_state,
                   provider_status=t.provider_status, reason=t.reason, data=t.data,
                   at=iso(t.at) or "")


class DeploymentDoc(_Document):
    """One deployment of a job's tuned model."""

    id: str
    job_id: str
    provider: str
    model: str
    deployed_model: str | None
    state: str
    provider_status: str | None
    capacity: int
    ttl_hours: float | None
    expires_at: str | None
    age_s: float
    error: str | None
    attempts: int
    last_error: str | None
    created_at: str
    ready_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, d: Deployment, now: datetime | None = None) -> DeploymentDoc:
        end = d.finished_at or now or utcnow()
        return cls(
            id=d.id, job_id=d.job_id, provider=d.provider, model=d.model,
            deployed_model=d.deployed_model, state=d.state, provider_status=d.provider_status,
            capacity=d.capacity, ttl_hours=d.ttl_hours, expires_at=iso(d.expires_at),
            age_s=round((end - d.created_at).total_seconds(), 1), error=d.error,
            attempts=d.attempts, last_error=d.last_error, created_at=iso(d.created_at) or "",
            ready_at=iso(d.ready_at), finished_at=iso(d.finished_at))


class EventDoc(_Document):
    """One line of the provider job's own event log."""

    at: str
    level: str
    message: str

    @classmethod
    def of(cls, e: RemoteEvent) -> EventDoc:
        return cls(at=iso(e.at) or "", level=e.level, message=e.message)


class JobDoc(_Document):
    """A job: where it is, what the provider made of it, and its bookkeeping."""

    id: str
    project: str
    name: str
    provider: str
    base_model: str
    method: str
    state: str
    provider_status: str | None
    provider_job_id: str | None
    fine_tuned_model: str | None
    deployed_model: str | None
    error: str | None
    #: Why a failed job failed, as a stable class (docs/dashboards.md lists them).
    failure_kind: str | None
    labels: dict[str, Any]
    idempotency_key: str | None
    training_file_id: str | None
    validation_file_id: str | None
    result: dict[str, Any]
    #: What clients call the tuned model with (LiteLLM's names), once there is one.
    model_ref: dict[str, Any] | None
    dataset: dict[str, Any] | None
    attempts: int
    last_error: str | None
    created_at: str
    updated_at: str
    finished_at: str | None
    next_run_at: str | None

    @classmethod
    def of(cls, job: Job) -> JobDoc:
        return cls(
            id=job.id, project=job.project, name=job.name, provider=job.provider,
            base_model=job.base_model, method=job.method, state=job.state,
            provider_status=job.provider_status, provider_job_id=job.provider_job_id,
            fine_tuned_model=job.fine_tuned_model, deployed_model=job.deployed_model,
            error=job.error, failure_kind=job.failure_kind, labels=dict(job.labels),
            idempotency_key=job.idempotency_key,
            training_file_id=job.training_file_id, validation_file_id=job.validation_file_id,
            result=dict(job.result), model_ref=job.result.get("model_ref"),
            dataset=None if job.dataset is None else dict(job.dataset),
            attempts=job.attempts, last_error=job.last_error,
            created_at=iso(job.created_at) or "", updated_at=iso(job.updated_at) or "",
            finished_at=iso(job.finished_at), next_run_at=iso(job.next_run_at))


def job_json(job: Job, history: list[JobTransition] | None = None) -> dict[str, Any]:
    """A job as JSON data, with its ``history`` when given."""
    data = JobDoc.of(job).doc()
    if history is not None:
        data["history"] = [TransitionDoc.of(t).doc() for t in history]
    return data


def deployment_json(d: Deployment, now: datetime | None = None) -> dict[str, Any]:
    """A deployment as JSON data."""
    return DeploymentDoc.of(d, now).doc()


class DeliveryDoc(_Document):
    """A webhook delivery: one event for one endpoint."""

    id: str
    job_id: str
    seq: int
    event_type: str
    endpoint: str
    source: str
    secret_name: str
    status: str
    attempts: int
    attempt_limit: int | None
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    dead_at: str | None

    @classmethod
    def of(cls, d: WebhookDelivery, url: str) -> DeliveryDoc:
        return cls(id=d.id, job_id=d.job_id, seq=d.seq, event_type=d.event_type,
                   endpoint=url, source=d.source, secret_name=d.secret_name, status=d.status,
                   attempts=d.attempts, attempt_limit=d.attempt_limit,
                   next_attempt_at=iso(d.next_attempt_at), last_status_code=d.last_status_code,
                   last_error=d.last_error, created_at=iso(d.created_at) or "",
                   delivered_at=iso(d.delivered_at), dead_at=iso(d.dead_at))


class AttemptDoc(_Document):
    """One attempt to deliver a webhook event."""

    attempt: int
    outcome: str
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_snippet: str | None
    started_at: str
    finished_at: str

    @classmethod
    def of(cls, a: WebhookAttempt) -> AttemptDoc:
        return cls(attempt=a.attempt, outcome=a.outcome, status_code=a.status_code,
                   latency_ms=a.latency_ms, error=a.error, response_snippet=a.response_snippet,
                   started_at=iso(a.started_at) or "", finished_at=iso(a.finished_at) or "")


class EndpointDoc(_Document):
    """A URL webhooks were sent to, and whether a 410 disabled it."""

    id: str
    url: str
    state: str
    disabled_at: str | None
    disabled_reason: str | None
    created_at: str

    @classmethod
    def of(cls, e: WebhookEndpoint) -> EndpointDoc:
        return cls(id=e.id, url=e.url, state=e.state, disabled_at=iso(e.disabled_at),
                   disabled_reason=e.disabled_reason, created_at=iso(e.created_at) or "")


def delivery_json(d: WebhookDelivery, url: str) -> dict[str, Any]:
    """A webhook delivery (sent to ``url``) as JSON data."""
    return DeliveryDoc.of(d, url).doc()


def attempt_json(a: WebhookAttempt) -> dict[str, Any]:
    """A delivery attempt as JSON data."""
    return AttemptDoc.of(a).doc()


def endpoint_json(e: WebhookEndpoint) -> dict[str, Any]:
    """A webhook endpoint as JSON data."""
    return EndpointDoc.of(e).doc()
