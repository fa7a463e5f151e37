"""Every locking or multi-row statement, by name, each taking ``now`` so tests never sleep.

Where PostgreSQL and SQLite need different text, both live under one name. SQLite has a
single writer (tunectl opens every transaction with BEGIN IMMEDIATE), so it needs no row
locks; PostgreSQL uses ``FOR UPDATE SKIP LOCKED`` so that concurrent schedulers split the
due jobs between them instead of waiting on, or double-claiming, each other's rows.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from orchestrator.config import STEP_SHARE_OF_LEASE
from orchestrator.db.models import (
    DELIVERIES,
    DEPLOYMENTS,
    JOBS,
    WEBHOOKS_SEEN,
    Deployment,
    Job,
    WebhookDelivery,
)
from orchestrator.db.types import TZDateTime, new_id

#: Statements run on a session's connection or on a bare connection (the hot path).
DB = Session | sa.Connection

_CLAIM_DUE_JOBS = {
    # Served by the partial index ix_jobs_due (next_run_at, id) WHERE lease_owner IS NULL.
    # MATERIALIZED fences the CTE: without it PostgreSQL may re-run the LIMIT subquery per
    # row of the UPDATE and claim more rows than asked for.
    "postgresql": """
        WITH due AS MATERIALIZED (
            SELECT id FROM jobs
            WHERE lease_owner IS NULL AND next_run_at <= :now
            ORDER BY next_run_at, id
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        UPDATE jobs SET lease_owner = :owner, lease_expires_at = :until
        WHERE id IN (SELECT id FROM due)
        RETURNING id, state, version, attempts, last_error, provider_job_id, next_run_at
    """,
    "sqlite": """
        UPDATE jobs SET lease_owner = :owner, lease_expires_at = :until
        WHERE id IN (
            SELECT id FROM jobs
            WHERE lease_owner IS NULL AND next_run_at <= :now
            ORDER BY next_run_at, id
            LIMIT :limit
        )
        RETURNING id, state, version, attempts, last_error, provider_job_id, next_run_at
    """,
}

_RESCUE_EXPIRED_LEASES = """
    -- The job is due again from the moment its lease expired (not since its old
    -- next_run_at, which would make every rescue look a whole lease late).
    UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL, next_run_at = lease_expires_at,
        last_error = 'the lease of ' || lease_owner || ' expired before its step finished'
            || ' (worker lost or task message lost)'
    WHERE lease_owner IS NOT NULL AND lease_expires_at < :now
    RETURNING id, state, attempts
"""


@dataclass(frozen=True)
class Released:
    """A lease given back."""

    #: A provider said the job changed while the lease was held (``poke_jobs``): its step
    #: should run again now (``claim_job``) rather than at ``next_run_at``.
    poked: bool


@dataclass(frozen=True)
class Claimed:
    """A job the caller now holds the lease of."""

    id: str
    state: str
    version: int
    attempts: int
    last_error: str | None
    provider_job_id: str | None
    #: When it was due (the claim is how late it is picked up).
    next_run_at: datetime


def connection(db: DB) -> sa.Connection:
    """The connection a statement runs on."""
    return db.connection() if isinstance(db, Session) else db


def claim_due_jobs(
    db: DB, *, owner: str, now: datetime, until: datetime, limit: int
) -> list[Claimed]:
    """Lease up to ``limit`` due, unleased jobs to ``owner`` until ``until``.

    ``attempts`` in the result counts the times the job's current step has started without
    progress (take_up counts them), so a step whose message was lost before it ever ran
    costs the job nothing.
    """
    stmt = sa.text(_CLAIM_DUE_JOBS[connection(db).dialect.name]).bindparams(
        sa.bindparam("now", type_=TZDateTime()), sa.bindparam("until", type_=TZDateTime())
    ).columns(sa.column("id"), sa.column("state"), sa.column("version"),
              sa.column("attempts"), sa.column("last_error"), sa.column("provider_job_id"),
              sa.column("next_run_at", TZDateTime()))
    rows = connection(db).execute(
        stmt, {"now": now, "until": until, "owner": owner, "limit": limit}
    )
    return [Claimed(*row) for row in rows]


_NEXT_DUE = """
    SELECT min(next_run_at) FROM jobs WHERE lease_owner IS NULL AND next_run_at IS NOT NULL
"""


def next_due(db: DB) -> datetime | None:
    """When the next unleased job falls due (the scheduler sleeps until then, at most a
    tick). Served by the partial index ix_jobs_due."""
    stmt = sa.text(_NEXT_DUE).columns(sa.column("due", TZDateTime()))
    value: datetime | None = connection(db).execute(stmt).scalar_one()
    return value


def rescue_expired_leases(db: DB, *, now: datetime) -> list[tuple[str, str, int]]:
    """Free the leases that expired (their holder died or its message was lost).

    Served by the partial index ix_jobs_leased. A freed job is claimable again at once,
    due since its lease expired (so the scheduler's lag measures from then); its step
    started counts as an attempt, so a job that keeps killing its worker fails in the end.
    Returns (job id, state, attempts) for each rescued job.
    """
    stmt = sa.text(_RESCUE_EXPIRED_LEASES).bindparams(sa.bindparam("now", type_=TZDateTime()))
    return [(r[0], r[1], r[2]) for r in connection(db).execute(stmt, {"now": now})]


def take_up(db: DB, job_id: str, *, lease: str, states: Collection[str],
            now: datetime, lease_s: float) -> Job | None:
    """Start a step: the job, if ``lease`` still holds it in one of ``states`` and has not
    lapsed; None for a stale, duplicate or late message (the job may be with another worker).

    One guarded UPDATE: it counts the attempt (unless a provider's webhook caused it: a
    ``poke_lease``, so that webhooks, replayed ones included, never use up a job's
    attempts) and, if less than STEP_SHARE_OF_LEASE of the lease is left (the message waited
    in the broker), renews the lease to a whole one, so that no step outlives its lease.
    """
    renew_before = now + timedelta(seconds=lease_s * STEP_SHARE_OF_LEASE)
    expires = JOBS.c.lease_expires_at
    row = connection(db).execute(
        sa.update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.lease_owner == lease, expires > now,
               JOBS.c.state.in_(states))
        .values(attempts=JOBS.c.attempts + (0 if is_poke(lease) else 1),
                lease_expires_at=sa.case((expires < renew_before,
                                          now + timedelta(seconds=lease_s)), else_=expires))
        .returning(*JOBS.c)
    ).one_or_none()
    return None if row is None else Job(**row._mapping)


def release_lease(
    db: DB,
    job_id: str,
    *,
    lease: str,
    next_run_at: datetime,
    version: int | None = None,
    attempts: int | None = None,
    last_error: str | None = None,
    provider_status: str | None = None,
    unpoke: bool = False,
) -> Released | None:
    """Give the lease back and set when the job is next due; None if the lease was lost
    (or, with ``version``, if the job changed meanwhile: a cancel landed). ``unpoke``
    forgets a provider's webhook that came meanwhile (a retry keeps its backoff).

    Lease tokens are unique per claim and a rescue clears the lease, so a step whose job
    was rescued meanwhile changes nothing.
    """
    values: dict[str, object] = {"lease_owner": None, "lease_expires_at": None,
                                 "next_run_at": next_run_at, "last_error": last_error}
    if attempts is not None:
        values["attempts"] = attempts
    if provider_status is not None:
        values["provider_status"] = provider_status
    if unpoke:
        values["poked_at"] = None
    guard = [JOBS.c.id == job_id, JOBS.c.lease_owner == lease]
    if version is not None:
        guard.append(JOBS.c.version == version)
    row = connection(db).execute(
        sa.update(JOBS).where(*guard).values(**values).returning(JOBS.c.poked_at)
    ).one_or_none()
    return None if row is None else Released(poked=row[0] is not None)


# --- Deployments ------------------------------------------------------------------------------

_DUE_DEPLOYMENTS = """
    SELECT d.id FROM deployments d JOIN jobs j ON j.id = d.job_id
    WHERE d.lease_owner IS NULL
      AND d.state IN ('creating', 'deploying', 'running', 'deleting')
      -- While its job is deploying, the job's deploy step owns the deployment.
      AND j.state <> 'deploying'
      AND (d.next_run_at <= :now
           -- Its job no longer wants it: anything but a succeeded job's serving deployment.
           OR (d.next_run_at IS NULL AND NOT (j.state = 'succeeded' AND d.state = 'running')))
    ORDER BY d.next_run_at NULLS FIRST, d.id
    LIMIT :limit
"""

_CLAIM_DUE_DEPLOYMENTS = {
    # Served by the partial index ix_deployments_live (state, next_run_at) over live states.
    "postgresql": f"""
        WITH due AS MATERIALIZED ({_DUE_DEPLOYMENTS} FOR UPDATE OF d SKIP LOCKED)
        UPDATE deployments SET lease_owner = :owner, lease_expires_at = :until
        WHERE id IN (SELECT id FROM due)
        RETURNING id, state, version, attempts
    """,
    "sqlite": f"""
        UPDATE deployments SET lease_owner = :owner, lease_expires_at = :until
        WHERE id IN ({_DUE_DEPLOYMENTS})
        RETURNING id, state, version, attempts
    """,
}

_RESCUE_EXPIRED_DEPLOYMENT_LEASES = """
    UPDATE deployments SET lease_owner = NULL, lease_expires_at = NULL,
        last_error = 'the lease of ' || lease_owner || ' expired before its step finished'
            || ' (worker lost or task message lost)'
    WHERE lease_owner IS NOT NULL AND lease_expires_at < :now
    RETURNING id, state, attempts
"""


def claim_due_deployments(db: DB, *, owner: str, now: datetime, until: datetime,
                          limit: int) -> list[tuple[str, str, int, int]]:
    """Lease up to ``limit`` deployments the scheduler must act on to ``owner``: those whose
    TTL expired or whose undeploy is due (``next_run_at``), and those whose job no longer
    wants them (the job failed or was re-deployed while one still existed).

    Returns (deployment id, state, version, attempts) for each.
    """
    stmt = sa.text(_CLAIM_DUE_DEPLOYMENTS[connection(db).dialect.name]).bindparams(
        sa.bindparam("now", type_=TZDateTime()), sa.bindparam("until", type_=TZDateTime()))
    rows = connection(db).execute(
        stmt, {"now": now, "until": until, "owner": owner, "limit": limit})
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def rescue_expired_deployment_leases(db: DB, *, now: datetime) -> list[tuple[str, str, int]]:
    """Free the deployment leases that expired; returns (id, state, attempts) of each."""
    stmt = sa.text(_RESCUE_EXPIRED_DEPLOYMENT_LEASES).bindparams(
        sa.bindparam("now", type_=TZDateTime()))
    return [(r[0], r[1], r[2]) for r in connection(db).execute(stmt, {"now": now})]


def take_up_deployment(db: DB, deployment_id: str, *, lease: str, now: datetime,
                       lease_s: float) -> Deployment | None:
    """Start the undeploy step: the deployment if ``lease`` still holds it and has not
    lapsed (counting the attempt and renewing a lease that waited); None otherwise."""
    renew_before = now + timedelta(seconds=lease_s * STEP_SHARE_OF_LEASE)
    expires = DEPLOYMENTS.c.lease_expires_at
    row = connection(db).execute(
        sa.update(DEPLOYMENTS)
        .where(DEPLOYMENTS.c.id == deployment_id, DEPLOYMENTS.c.lease_owner == lease,
               expires > now)
        .values(attempts=DEPLOYMENTS.c.attempts + 1,
                lease_expires_at=sa.case((expires < renew_before,
                                          now + timedelta(seconds=lease_s)), else_=expires))
        .returning(*DEPLOYMENTS.c)
    ).one_or_none()
    return None if row is None else Deployment(**row._mapping)


def release_deployment_lease(db: DB, deployment_id: str, *, lease: str,
                             next_run_at: datetime | None, last_error: str | None) -> bool:
    """Give a deployment's lease back, due again at ``next_run_at``; False if it was lost."""
    result = connection(db).execute(
        sa.update(DEPLOYMENTS)
        .where(DEPLOYMENTS.c.id == deployment_id, DEPLOYMENTS.c.lease_owner == lease)
        .values(lease_owner=None, lease_expires_at=None, next_run_at=next_run_at,
                last_error=last_error))
    return bool(result.rowcount)


# --- Inbound provider webhooks ----------------------------------------------------------------

#: The lease prefix of steps a provider's webhook caused (``poke_lease``).
POKE = "poke"


def poke_lease() -> str:
    """A lease token for a step a provider's webhook caused: its take-up is not counted."""
    return new_id(POKE)


def is_poke(lease: str) -> bool:
    """Whether ``lease`` is a ``poke_lease``."""
    return lease.startswith(f"{POKE}_")


# SET expressions all read the row as it was, so each CASE sees the lease before the UPDATE.
# An unleased job whose last step asked for a retry (last_error set) is left alone: its
# backoff (a provider's Retry-After, say) holds.
_POKE_JOBS = """
    UPDATE jobs SET
        lease_owner = CASE WHEN lease_owner IS NULL THEN :owner ELSE lease_owner END,
        lease_expires_at = CASE WHEN lease_owner IS NULL THEN :until ELSE lease_expires_at END,
        next_run_at = CASE WHEN lease_owner IS NULL THEN :now ELSE next_run_at END,
        poked_at = CASE WHEN lease_owner IS NULL THEN NULL ELSE :now END
    WHERE provider = :provider AND provider_job_id = :provider_job_id AND state IN :states
      AND (lease_owner IS NOT NULL OR last_error IS NULL)
    RETURNING id, state, lease_owner = :owner
"""

_CLAIM_JOB = """
    UPDATE jobs SET lease_owner = :owner, lease_expires_at = :until, next_run_at = :now,
        poked_at = NULL
    WHERE id = :id AND lease_owner IS NULL AND next_run_at IS NOT NULL
    RETURNING state
"""


@dataclass(frozen=True)
class Poked:
    """A job a provider said changed."""

    id: str
    state: str
    #: True: leased to the caller, who sends its step now; False: a step holds it, and
    #: runs again as soon as it gives the lease back.
    claimed: bool


def poke_jobs(db: DB, *, provider: str, provider_job_id: str, states: Collection[str],
              owner: str, now: datetime, until: datetime) -> list[Poked]:
    """A provider said its job ``provider_job_id`` changed: the tunectl job in one of
    ``states`` should look now rather than at its next poll. An unleased job is leased to
    ``owner`` (a ``poke_lease``) at once, unless it waits to retry; a leased one is marked
    poked (``jobs.poked_at``), so that the step holding it, which may have asked the
    provider a moment too early, runs again when it gives the lease back (``release_lease``
    says so). Served by ix_jobs_provider_job.
    """
    stmt = sa.text(_POKE_JOBS).bindparams(
        sa.bindparam("now", type_=TZDateTime()), sa.bindparam("until", type_=TZDateTime()),
        sa.bindparam("states", expanding=True))
    rows = connection(db).execute(stmt, {
        "owner": owner, "until": until, "now": now, "provider": provider,
        "provider_job_id": provider_job_id, "states": list(states)})
    return [Poked(r[0], r[1], bool(r[2])) for r in rows]


def claim_job(db: DB, job_id: str, *, owner: str, now: datetime,
              until: datetime) -> str | None:
    """Lease one unleased, non-terminal job to ``owner`` at once, clearing its poke (it was
    poked while a step held it); returns its state, None if someone else has it or it
    ended."""
    stmt = sa.text(_CLAIM_JOB).bindparams(
        sa.bindparam("now", type_=TZDateTime()), sa.bindparam("until", type_=TZDateTime()))
    found = connection(db).execute(
        stmt, {"id": job_id, "owner": owner, "now": now, "until": until}).scalar_one_or_none()
    return None if found is None else str(found)


def remember_webhook(db: DB, *, provider: str, webhook_id: str, now: datetime,
                     keep_s: float) -> bool:
    """Note that ``provider``'s webhook ``webhook_id`` was received; False if it had been
    already within ``keep_s`` (a replay). Entries older than that are forgotten first
    (served by ix_provider_webhooks_seen_received_at). On PostgreSQL a concurrent insert of
    the same id waits for the first and then finds it, so only one process acts on it."""
    conn = connection(db)
    conn.execute(sa.delete(WEBHOOKS_SEEN).where(
        WEBHOOKS_SEEN.c.received_at < now - timedelta(seconds=keep_s)))
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    # RETURNING rather than rowcount, which psycopg reports as 1 for a conflict skipped.
    inserted = conn.execute(dialect.insert(WEBHOOKS_SEEN).values(
        provider=provider, webhook_id=webhook_id, received_at=now).on_conflict_do_nothing()
        .returning(WEBHOOKS_SEEN.c.webhook_id)).first()
    return inserted is not None


# --- Webhook deliveries -----------------------------------------------------------------------

_CLAIM_DUE_DELIVERIES = {
    # Served by the partial index ix_webhook_deliveries_due (next_attempt_at, id) WHERE
    # status = 'pending' AND lease_owner IS NULL; MATERIALIZED as for jobs.
    "postgresql": """
        WITH due AS MATERIALIZED (
            SELECT id FROM webhook_deliveries
            WHERE status = 'pending' AND lease_owner IS NULL AND next_attempt_at <= :now
            ORDER BY next_attempt_at, id
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_deliveries SET lease_owner = :owner, lease_expires_at = :until
        WHERE id IN (SELECT id FROM due)
        RETURNING id
    """,
    "sqlite": """
        UPDATE webhook_deliveries SET lease_owner = :owner, lease_expires_at = :until
        WHERE id IN (
            SELECT id FROM webhook_deliveries
            WHERE status = 'pending' AND lease_owner IS NULL AND next_attempt_at <= :now
            ORDER BY next_attempt_at, id
            LIMIT :limit
        )
        RETURNING id
    """,
}

_RESCUE_EXPIRED_DELIVERY_LEASES = """
    UPDATE webhook_deliveries SET lease_owner = NULL, lease_expires_at = NULL,
        last_error = 'the lease of ' || lease_owner || ' expired before its attempt finished'
            || ' (worker lost or task message lost)'
    WHERE lease_owner IS NOT NULL AND lease_expires_at < :now
    RETURNING id, attempts
"""


def claim_due_deliveries(db: DB, *, owner: str, now: datetime, until: datetime,
                         limit: int) -> list[str]:
    """Lease up to ``limit`` pending webhook deliveries whose next attempt is due to
    ``owner``; returns their ids (each is also its event's webhook-id)."""
    stmt = sa.text(_CLAIM_DUE_DELIVERIES[connection(db).dialect.name]).bindparams(
        sa.bindparam("now", type_=TZDateTime()), sa.bindparam("until", type_=TZDateTime()))
    rows = connection(db).execute(
        stmt, {"now": now, "until": until, "owner": owner, "limit": limit})
    return [r[0] for r in rows]


def rescue_expired_delivery_leases(db: DB, *, now: datetime) -> list[tuple[str, int]]:
    """Free the delivery leases that expired (the attempt's worker died or its message was
    lost), served by ix_webhook_deliveries_leased. The delivery is due again at its
    ``next_attempt_at``: still the time it was due if its message was lost, the retry time
    its attempt set when taken up if that attempt was lost with its worker.
    Returns (delivery id, attempts) of each."""
    stmt = sa.text(_RESCUE_EXPIRED_DELIVERY_LEASES).bindparams(
        sa.bindparam("now", type_=TZDateTime()))
    return [(r[0], r[1]) for r in connection(db).execute(stmt, {"now": now})]


def take_up_delivery(db: DB, delivery_id: str, *, lease: str, now: datetime,
                     lease_s: float) -> WebhookDelivery | None:
    """Start an attempt: the delivery, if ``lease`` still holds it, pending and unlapsed,
    with the attempt counted and the lease now ``lease_s`` from ``now`` (the attempt's own,
    however long the message waited in the broker); None for a stale or duplicate
    message."""
    row = connection(db).execute(
        sa.update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.lease_owner == lease,
               DELIVERIES.c.lease_expires_at > now, DELIVERIES.c.status == "pending")
        .values(attempts=DELIVERIES.c.attempts + 1, updated_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(*DELIVERIES.c)
    ).one_or_none()
    return None if row is None else WebhookDelivery(**row._mapping)
