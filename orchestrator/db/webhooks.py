"""The only code that writes a webhook delivery's outcome, and the reads of deliveries,
attempts and endpoints.

A delivery's outcome is written in one transaction with its attempt row, guarded by the
attempt's lease: an attempt whose lease was rescued meanwhile still leaves its attempt row
(the request was sent) but changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from orchestrator.db.models import (
    ATTEMPTS,
    DELIVERIES,
    ENDPOINTS,
    JOBS,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from orchestrator.db.queries import DB, connection


@dataclass(frozen=True)
class Attempt:
    """What one attempt did, as its row records it."""

    #: delivered, failed or refused (nothing was sent).
    outcome: str
    started_at: datetime
    finished_at: datetime
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_snippet: str | None = None


def record(conn: sa.Connection, delivery: WebhookDelivery, lease: str, attempt: Attempt, *,
           next_attempt_at: datetime | None, disable_endpoint: str | None = None) -> bool:
    """Write ``attempt`` and what follows from it: delivered (a 2xx), pending again until
    ``next_attempt_at``, or dead (neither); with ``disable_endpoint`` (a reason), the
    endpoint is disabled too. False if the lease was lost meanwhile (only the attempt row
    is written)."""
    now = attempt.finished_at
    conn.execute(sa.insert(ATTEMPTS).values(
        delivery_id=delivery.id, endpoint_id=delivery.endpoint_id, attempt=delivery.attempts,
        outcome=attempt.outcome, status_code=attempt.status_code,
        latency_ms=attempt.latency_ms, error=attempt.error,
        response_snippet=attempt.response_snippet, started_at=attempt.started_at,
        finished_at=now))
    if attempt.outcome == "delivered":
        status: dict[str, Any] = {"status": "delivered", "delivered_at": now}
    elif next_attempt_at is not None:
        status = {"status": "pending"}
    else:
        status = {"status": "dead", "dead_at": now}
    done = conn.execute(
        sa.update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery.id, DELIVERIES.c.lease_owner == lease)
        .values(**status, next_attempt_at=next_attempt_at, lease_owner=None,
                lease_expires_at=None, last_status_code=attempt.status_code,
                last_error=attempt.error, updated_at=now)).rowcount
    if done and disable_endpoint is not None:
        conn.execute(sa.update(ENDPOINTS)
                     .where(ENDPOINTS.c.id == delivery.endpoint_id,
                            ENDPOINTS.c.state == "enabled")
                     .values(state="disabled", disabled_at=now,
                             disabled_reason=disable_endpoint))
    return bool(done)


def give_up(conn: sa.Connection, delivery: WebhookDelivery, lease: str, reason: str,
            now: datetime, *, attempted: bool) -> bool:
    """Mark a delivery dead without an attempt (its endpoint is disabled, or its last attempt
    was lost with its worker); ``attempted=False`` uncounts the attempt just taken up."""
    done = conn.execute(
        sa.update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery.id, DELIVERIES.c.lease_owner == lease)
        .values(status="dead", dead_at=now, next_attempt_at=None, lease_owner=None,
                lease_expires_at=None, last_error=reason, updated_at=now,
                attempts=DELIVERIES.c.attempts - (0 if attempted else 1))).rowcount
    return bool(done)


def retry_if_lost(conn: sa.Connection, delivery_id: str, lease: str, at: datetime) -> None:
    """Set when an attempt just taken up under ``lease`` is retried if it never records
    its outcome (its worker dies): the lease's rescue leaves the delivery due then, not at
    once, so lost attempts keep to the schedule too."""
    conn.execute(sa.update(DELIVERIES)
                 .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.lease_owner == lease)
                 .values(next_attempt_at=at))


def release(conn: sa.Connection, delivery_id: str, lease: str, due: datetime) -> None:
    """Hand a delivery's lease back with it due at ``due`` (its message could not be
    sent)."""
    conn.execute(sa.update(DELIVERIES)
                 .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.lease_owner == lease)
                 .values(lease_owner=None, lease_expires_at=None, next_attempt_at=due))


def redeliver(conn: sa.Connection, delivery: WebhookDelivery, now: datetime,
              schedule_limit: int) -> bool:
    """Make a delivery that is not being attempted right now due at once, keeping its id
    (its webhook-id): a delivered or dead one with one more attempt allowed, a pending one
    with the attempts it had left (``schedule_limit`` by default), and at least one more.
    False if an attempt holds it or it changed since ``delivery`` was read."""
    limit = delivery.attempts + 1
    if delivery.status == "pending":
        limit = max(limit, delivery.attempt_limit or schedule_limit)
    done = conn.execute(
        sa.update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery.id, DELIVERIES.c.lease_owner.is_(None),
               DELIVERIES.c.status == delivery.status,
               DELIVERIES.c.attempts == delivery.attempts)
        .values(status="pending", next_attempt_at=now, delivered_at=None, dead_at=None,
                attempt_limit=limit, updated_at=now)).rowcount
    return bool(done)


def enable(conn: sa.Connection, endpoint_id: str) -> bool:
    """Enable a disabled endpoint again; False if it was enabled already."""
    return bool(conn.execute(
        sa.update(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id, ENDPOINTS.c.state == "disabled")
        .values(state="enabled", disabled_at=None, disabled_reason=None)).rowcount)


def delivery(db: DB, delivery_id: str) -> WebhookDelivery | None:
    """A delivery by id (its webhook-id)."""
    row = connection(db).execute(
        sa.select(DELIVERIES).where(DELIVERIES.c.id == delivery_id)).one_or_none()
    return None if row is None else WebhookDelivery(**row._mapping)


def endpoint(db: DB, endpoint_id: str) -> WebhookEndpoint | None:
    """An endpoint by id."""
    row = connection(db).execute(
        sa.select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)).one_or_none()
    return None if row is None else WebhookEndpoint(**row._mapping)


def deliveries(session: Session, *, job_id: str | None = None, status: str | None = None,
               limit: int = 50) -> list[tuple[WebhookDelivery, str]]:
    """Deliveries newest first, each with its endpoint's URL."""
    query = (select(WebhookDelivery, WebhookEndpoint.url)
             .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
             .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
             .limit(limit))
    if job_id:
        query = query.where(col(WebhookDelivery.job_id) == job_id)
    if status:
        query = query.where(col(WebhookDelivery.status) == status)
    return [(d, url) for d, url in session.exec(query)]


def attempts(session: Session, delivery_id: str) -> list[WebhookAttempt]:
    """A delivery's attempts, oldest first."""
    return list(session.exec(select(WebhookAttempt)
                             .where(col(WebhookAttempt.delivery_id) == delivery_id)
                             .order_by(col(WebhookAttempt.attempt))))


def job_project(db: DB, job_id: str) -> str:
    """The project of a delivery's job."""
    return str(connection(db).execute(
        sa.select(JOBS.c.project).where(JOBS.c.id == job_id)).scalar_one())


def endpoints(session: Session) -> list[WebhookEndpoint]:
    """Every endpoint webhooks were ever sent to, by URL."""
    return list(session.exec(select(WebhookEndpoint).order_by(col(WebhookEndpoint.url))))
