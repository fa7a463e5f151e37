"""The tables: jobs, their append-only transition history, uploaded provider files,
deployments of tuned models with their own history, the datasets each project uploaded
through the API, webhook notifications (endpoints, the outbox of deliveries, and every
delivery attempt), and the ids of providers' webhooks received lately (to ignore replays).

The tables hold their own invariants as CHECK constraints, so that no code path (or a
hand-written UPDATE from an operator) can leave a job half-terminal or half-leased.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from orchestrator.db.types import JSONDict, TZDateTime, utcnow
from orchestrator.states import DEPLOYMENT_LIVE, TERMINAL, DeploymentState, FailureKind, State

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_STATES = ", ".join(f"'{s.value}'" for s in State)
_TERMINAL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))
_FAILURE_KINDS = ", ".join(f"'{k.value}'" for k in FailureKind)
#: The CHECKs on jobs.failure_kind (migration 0006 creates the same).
FAILURE_KIND_CHECKS = {
    "failure_kind_known": f"failure_kind IS NULL OR failure_kind IN ({_FAILURE_KINDS})",
    "failed_has_kind": "(state = 'failed') = (failure_kind IS NOT NULL)",
}
_BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _tz(**kw: Any) -> Any:
    return Field(sa_type=TZDateTime, **kw)


class Job(SQLModel, table=True):
    """One fine-tune job: its spec, where it is, and when the scheduler should look at it next."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(f"state IN ({_STATES})", name="state_known"),
        sa.CheckConstraint(
            f"(state IN ({_TERMINAL})) = (finished_at IS NOT NULL)", name="finished_iff_terminal"
        ),
        sa.CheckConstraint(
            f"state NOT IN ({_TERMINAL}) OR (next_run_at IS NULL AND lease_owner IS NULL)",
            name="terminal_is_idle",
        ),
        sa.CheckConstraint(
            "(lease_owner IS NULL) = (lease_expires_at IS NULL)", name="lease_complete"
        ),
        sa.CheckConstraint("version >= 1 AND attempts >= 0", name="counters"),
        *(sa.CheckConstraint(sql, name=name) for name, sql in FAILURE_KIND_CHECKS.items()),
        # The scheduler's claim: due, unleased jobs in (next_run_at, id) order.
        sa.Index(
            "ix_jobs_due",
            "next_run_at",
            "id",
            postgresql_where=sa.text("lease_owner IS NULL AND next_run_at IS NOT NULL"),
            sqlite_where=sa.text("lease_owner IS NULL AND next_run_at IS NOT NULL"),
        ),
        # The rescuer: leases that may have expired.
        sa.Index(
            "ix_jobs_leased",
            "lease_expires_at",
            postgresql_where=sa.text("lease_owner IS NOT NULL"),
            sqlite_where=sa.text("lease_owner IS NOT NULL"),
        ),
        sa.Index("ix_jobs_state_provider", "state", "provider"),
        # The API's list: one project's jobs, newest first (keyset pagination).
        sa.Index("ix_jobs_project_created", "project", "created_at", "id"),
        # An idempotency key is a project's own: another project's key never collides.
        sa.UniqueConstraint("project", "idempotency_key"),
        # An inbound provider webhook names the provider's job id.
        sa.Index("ix_jobs_provider_job", "provider", "provider_job_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    #: Who owns the job: an API token's project, or TUNECTL_DEFAULT_PROJECT for the CLI.
    project: str = Field(default="default", max_length=64)
    name: str = Field(max_length=200)
    provider: str = Field(max_length=40)
    base_model: str = Field(max_length=200)
    method: str = Field(max_length=20)
    spec: dict[str, Any] = Field(sa_type=JSONDict)
    spec_sha256: str = Field(max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=200)
    labels: dict[str, Any] = Field(default_factory=dict, sa_type=JSONDict)
    training_blob: str = Field(max_length=64)
    validation_blob: str | None = Field(default=None, max_length=64)

    state: str = Field(default=State.QUEUED.value, max_length=20)
    version: int = 1
    provider_status: str | None = Field(default=None, max_length=60)
    provider_job_id: str | None = Field(default=None, max_length=200)
    training_file_id: str | None = Field(default=None, max_length=200)
    validation_file_id: str | None = Field(default=None, max_length=200)
    fine_tuned_model: str | None = Field(default=None, max_length=300)
    #: The deployment's model id that clients call, while a deployment of the job serves.
    deployed_model: str | None = Field(default=None, max_length=300)
    result: dict[str, Any] = Field(default_factory=dict, sa_type=JSONDict)
    #: The validate step's dataset summary (examples, token statistics, billed tokens,
    #: estimated cost, warnings) for dashboards; null until the datasets are validated.
    dataset: dict[str, Any] | None = Field(default=None, sa_type=JSONDict)
    error: str | None = None
    #: Why a failed job failed, as a states.FailureKind (set exactly while it is failed).
    failure_kind: str | None = Field(default=None, max_length=30)

    next_run_at: datetime | None = _tz(default=None)
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_expires_at: datetime | None = _tz(default=None)
    #: When a provider said (by webhook) that the job changed while a step held it: the
    #: step runs again as soon as it gives the lease back.
    poked_at: datetime | None = _tz(default=None)
    attempts: int = 0
    last_error: str | None = None

    created_at: datetime = _tz(default_factory=utcnow, index=True)
    updated_at: datetime = _tz(default_factory=utcnow)
    finished_at: datetime | None = _tz(default=None)


class JobTransition(SQLModel, table=True):
    """One state change of one job; append-only. ``seq`` is gapless per job and equals the
    job's ``version`` right after the change."""

    __tablename__ = "job_transitions"
    __table_args__ = (sa.UniqueConstraint("job_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIGINT_ID)
    job_id: str = Field(foreign_key="jobs.id", max_length=40)
    seq: int
    from_state: str | None = Field(default=None, max_length=20)
    to_state: str = Field(max_length=20)
    provider_status: str | None = Field(default=None, max_length=60)
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONDict)
    at: datetime = _tz(default_factory=utcnow)


#: The tables, for Core statements on hot paths.
JOBS: sa.Table = Job.__table__  # type: ignore[attr-defined]
HISTORY: sa.Table = JobTransition.__table__  # type: ignore[attr-defined]


class ProviderFile(SQLModel, table=True):
    """A dataset uploaded to one provider account, keyed by content hash (uploaded once).

    A row without ``file_id`` is a claim: ``claimed_by`` is uploading it until ``claimed_until``.
    """

    __tablename__ = "provider_files"
    __table_args__ = (
        sa.UniqueConstraint("provider", "account", "sha256"),
        sa.CheckConstraint(
            "file_id IS NOT NULL OR (claimed_by IS NOT NULL AND claimed_until IS NOT NULL)",
            name="uploaded_or_claimed",
        ),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIGINT_ID)
    provider: str = Field(max_length=40)
    account: str = Field(max_length=64)
    sha256: str = Field(max_length=64)
    bytes: int = Field(sa_type=sa.BigInteger)
    file_id: str | None = Field(default=None, max_length=200)
    claimed_by: str | None = Field(default=None, max_length=40)
    claimed_until: datetime | None = _tz(default=None)
    created_at: datetime = _tz(default_factory=utcnow)
    uploaded_at: datetime | None = _tz(default=None)


_DEPLOYMENT_STATES = ", ".join(f"'{s.value}'" for s in DeploymentState)
_DEPLOYMENT_LIVE = ", ".join(f"'{s.value}'" for s in sorted(DEPLOYMENT_LIVE))


class Deployment(SQLModel, table=True):
    """One deployment of a job's tuned model at its provider; it bills while it lives.

    The deploy step owns a deployment while its job is ``deploying``; after that the
    scheduler claims it (under a lease, like a job) when it is due: its TTL expired, an
    undeploy was requested, or its job no longer wants it.
    """

    __tablename__ = "deployments"
    __table_args__ = (
        sa.CheckConstraint(f"state IN ({_DEPLOYMENT_STATES})", name="state_known"),
        sa.CheckConstraint(
            "deployed_model IS NOT NULL OR state IN ('creating', 'deleting', 'deleted', "
            "'failed')", name="created_has_id"),
        sa.CheckConstraint("(state IN ('deleted', 'failed')) = (finished_at IS NOT NULL)",
                           name="finished_iff_terminal"),
        sa.CheckConstraint(
            "state NOT IN ('deleted', 'failed') OR (next_run_at IS NULL AND lease_owner IS NULL)",
            name="terminal_is_idle"),
        sa.CheckConstraint(
            "(lease_owner IS NULL) = (lease_expires_at IS NULL)", name="lease_complete"),
        sa.CheckConstraint("version >= 1 AND attempts >= 0 AND capacity >= 1",
                           name="counters"),
        # At most one deployment of a job may exist at the provider at a time.
        sa.Index("uq_deployments_live_job", "job_id", unique=True,
                 postgresql_where=sa.text(f"state IN ({_DEPLOYMENT_LIVE})"),
                 sqlite_where=sa.text(f"state IN ({_DEPLOYMENT_LIVE})")),
        # The scheduler's claim: live deployments, due or unleased.
        sa.Index("ix_deployments_live", "state", "next_run_at",
                 postgresql_where=sa.text(f"state IN ({_DEPLOYMENT_LIVE})"),
                 sqlite_where=sa.text(f"state IN ({_DEPLOYMENT_LIVE})")),
    )

    id: str = Field(primary_key=True, max_length=40)
    job_id: str = Field(foreign_key="jobs.id", max_length=40, index=True)
    provider: str = Field(max_length=40)
    #: The provider account that holds it (a fingerprint, never the key).
    account: str = Field(max_length=64)
    #: The tuned model it serves.
    model: str = Field(max_length=300)
    #: The provider's id for it, the model name clients call; null until created.
    deployed_model: str | None = Field(default=None, max_length=300)
    capacity: int
    ttl_hours: float | None = None
    #: When the scheduler deletes it (created + ttl); null: until undeployed.
    expires_at: datetime | None = _tz(default=None)

    state: str = Field(default=DeploymentState.CREATING.value, max_length=20)
    version: int = 1
    provider_status: str | None = Field(default=None, max_length=60)
    error: str | None = None

    next_run_at: datetime | None = _tz(default=None)
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_expires_at: datetime | None = _tz(default=None)
    attempts: int = 0
    last_error: str | None = None

    created_at: datetime = _tz(default_factory=utcnow)
    updated_at: datetime = _tz(default_factory=utcnow)
    ready_at: datetime | None = _tz(default=None)
    finished_at: datetime | None = _tz(default=None)


class DeploymentTransition(SQLModel, table=True):
    """One state change of one deployment; append-only, ``seq`` gapless per deployment."""

    __tablename__ = "deployment_transitions"
    __table_args__ = (sa.UniqueConstraint("deployment_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIGINT_ID)
    deployment_id: str = Field(foreign_key="deployments.id", max_length=40)
    seq: int
    from_state: str | None = Field(default=None, max_length=20)
    to_state: str = Field(max_length=20)
    provider_status: str | None = Field(default=None, max_length=60)
    reason: str | None = None
    at: datetime = _tz(default_factory=utcnow)


DEPLOYMENTS: sa.Table = Deployment.__table__  # type: ignore[attr-defined]
DEPLOYMENT_HISTORY: sa.Table = DeploymentTransition.__table__  # type: ignore[attr-defined]


class UploadedDataset(SQLModel, table=True):
    """A dataset a project uploaded through the API; a spec of that project may then name it
    as ``sha256:<hex>`` (another project's upload is not found)."""

    __tablename__ = "uploaded_datasets"

    project: str = Field(primary_key=True, max_length=64)
    sha256: str = Field(primary_key=True, max_length=64)
    bytes: int = Field(sa_type=sa.BigInteger)
    created_at: datetime = _tz(default_factory=utcnow)


# --- Webhook notifications --------------------------------------------------------------------


class WebhookEndpoint(SQLModel, table=True):
    """A URL webhooks are sent to, from job specs or configuration. Its id is derived from
    the URL (``notify.outbox.endpoint_id``); a 410 Gone disables it."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        sa.CheckConstraint("state IN ('enabled', 'disabled')", name="state_known"),
        sa.CheckConstraint("(state = 'disabled') = (disabled_at IS NOT NULL)",
                           name="disabled_has_time"),
    )

    id: str = Field(primary_key=True, max_length=40)
    url: str = Field(max_length=2000, unique=True)
    state: str = Field(default="enabled", max_length=20)
    disabled_at: datetime | None = _tz(default=None)
    disabled_reason: str | None = None
    created_at: datetime = _tz(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint: the outbox row a transition writes, then its delivery.

    ``id`` is the Standard Webhooks ``webhook-id``, the same on every attempt and
    redelivery; ``payload`` holds the exact bytes that are signed and sent. One row per
    (transition, endpoint): a job event never reaches an endpoint as two different events.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "seq", "endpoint_id"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status_known"),
        sa.CheckConstraint("(status = 'pending') = (next_attempt_at IS NOT NULL)",
                           name="pending_is_due"),
        sa.CheckConstraint("(status = 'delivered') = (delivered_at IS NOT NULL)",
                           name="delivered_has_time"),
        sa.CheckConstraint("(status = 'dead') = (dead_at IS NOT NULL)", name="dead_has_time"),
        sa.CheckConstraint("(lease_owner IS NULL) = (lease_expires_at IS NULL)",
                           name="lease_complete"),
        sa.CheckConstraint("status = 'pending' OR lease_owner IS NULL", name="done_is_idle"),
        sa.CheckConstraint("attempts >= 0 AND (attempt_limit IS NULL OR attempt_limit >= 1)",
                           name="counters"),
        # The scheduler's claim: pending, unleased deliveries in (next_attempt_at, id) order.
        sa.Index("ix_webhook_deliveries_due", "next_attempt_at", "id",
                 postgresql_where=sa.text("status = 'pending' AND lease_owner IS NULL"),
                 sqlite_where=sa.text("status = 'pending' AND lease_owner IS NULL")),
        # The rescuer: leases that may have expired.
        sa.Index("ix_webhook_deliveries_leased", "lease_expires_at",
                 postgresql_where=sa.text("lease_owner IS NOT NULL"),
                 sqlite_where=sa.text("lease_owner IS NOT NULL")),
        sa.Index("ix_webhook_deliveries_status_created", "status", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    job_id: str = Field(foreign_key="jobs.id", max_length=40, index=True)
    #: The job transition (``job_transitions.seq``) that caused the event.
    seq: int
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id", max_length=40, index=True)
    #: Name of the signing secret (an environment variable or secret file), never the secret.
    secret_name: str = Field(max_length=128)
    #: Where the endpoint came from: ``spec`` (the job's notify) or ``config`` (TUNECTL_WEBHOOKS).
    source: str = Field(max_length=10)
    event_type: str = Field(max_length=60)
    payload: str = Field(sa_type=sa.Text)

    status: str = Field(default="pending", max_length=20)
    #: Attempts started; the event is dead once ``attempt_limit`` of them failed.
    attempts: int = 0
    #: Null: as many attempts as the retry schedule has; a redelivery of a delivered or
    #: dead event allows one more.
    attempt_limit: int | None = None
    next_attempt_at: datetime | None = _tz(default=None)
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_expires_at: datetime | None = _tz(default=None)
    last_status_code: int | None = None
    last_error: str | None = None

    created_at: datetime = _tz(default_factory=utcnow)
    updated_at: datetime = _tz(default_factory=utcnow)
    delivered_at: datetime | None = _tz(default=None)
    dead_at: datetime | None = _tz(default=None)


class WebhookAttempt(SQLModel, table=True):
    """One attempt to deliver one event: append-only, for dashboards."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        sa.UniqueConstraint("delivery_id", "attempt"),
        sa.CheckConstraint("outcome IN ('delivered', 'failed', 'refused')",
                           name="outcome_known"),
        sa.Index("ix_webhook_attempts_endpoint_started", "endpoint_id", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIGINT_ID)
    delivery_id: str = Field(foreign_key="webhook_deliveries.id", max_length=40)
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id", max_length=40)
    #: 1, 2, … per delivery (a redelivery carries on counting).
    attempt: int
    #: delivered (2xx), failed (any other answer, a timeout, a network error) or refused
    #: (nothing was sent: the SSRF guard or a missing secret).
    outcome: str = Field(max_length=20)
    status_code: int | None = None
    #: From sending the request to the start of the response; null when nothing was sent.
    latency_ms: float | None = None
    error: str | None = None
    #: The start of the response body.
    response_snippet: str | None = Field(default=None, max_length=500)
    started_at: datetime = _tz()
    finished_at: datetime = _tz()


class ProviderWebhookSeen(SQLModel, table=True):
    """A provider's webhook that was verified and acted on, kept while a replay of it would
    still verify (its timestamp's tolerance), so that a replay changes nothing. Several API
    processes share it; entries older than that are deleted as new ones come."""

    __tablename__ = "provider_webhooks_seen"
    __table_args__ = (sa.Index("ix_provider_webhooks_seen_received_at", "received_at"),)

    provider: str = Field(primary_key=True, max_length=40)
    #: The request's ``webhook-id`` header.
    webhook_id: str = Field(primary_key=True, max_length=200)
    received_at: datetime = _tz()


ENDPOINTS: sa.Table = WebhookEndpoint.__table__  # type: ignore[attr-defined]
DELIVERIES: sa.Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
ATTEMPTS: sa.Table = WebhookAttempt.__table__  # type: ignore[attr-defined]
WEBHOOKS_SEEN: sa.Table = ProviderWebhookSeen.__table__  # type: ignore[attr-defined]
