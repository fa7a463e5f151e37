"""Webhook operations of ``tunectl webhooks``: list deliveries and their attempts,
redeliver an event under its own webhook-id, list the endpoints and enable one that a 410
disabled. Each completes whole or raises a UserError; the sending itself is the deliver
step's (the scheduler sends what is due)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.db import webhooks as rows
from orchestrator.db.engine import session_scope
from orchestrator.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from orchestrator.db.types import utcnow
from orchestrator.errors import UserError
from orchestrator.notify.outbox import endpoint_id


@dataclass(frozen=True)
class Event:
    """One event for one endpoint, with its attempts."""

    delivery: WebhookDelivery
    endpoint: WebhookEndpoint
    attempts: list[WebhookAttempt]


def deliveries(engine: sa.Engine, *, job_id: str | None = None, status: str | None = None,
               limit: int = 50) -> list[tuple[WebhookDelivery, str]]:
    """Deliveries newest first, each with its endpoint's URL."""
    with session_scope(engine) as session:
        return rows.deliveries(session, job_id=job_id, status=status, limit=limit)


def event(engine: sa.Engine, delivery_id: str) -> Event:
    """One delivery (by its webhook-id) with its endpoint and attempts; raises UserError."""
    with session_scope(engine) as session:
        found = rows.delivery(session, delivery_id)
        if found is None:
            raise UserError(f"no webhook event {delivery_id!r}; `tunectl webhooks deliveries` "
                            "lists them")
        endpoint = rows.endpoint(session, found.endpoint_id)
        assert endpoint is not None  # a foreign key
        return Event(found, endpoint, rows.attempts(session, delivery_id))


def redeliver(engine: sa.Engine, delivery_id: str, *, settings: Settings,
              now: datetime | None = None) -> Event:
    """Send an event again with the same webhook-id: it is due at once, a delivered or dead
    one with one attempt more, a pending one keeping the attempts it had left."""
    found = event(engine, delivery_id)
    endpoint = found.endpoint
    if endpoint.state == "disabled":
        raise UserError(f"endpoint {endpoint.url} is disabled ({endpoint.disabled_reason}); "
                        f"`tunectl webhooks enable {endpoint.url}` first")
    with engine.begin() as conn:
        if not rows.redeliver(conn, found.delivery, now or utcnow(),
                              len(settings.webhook_retry_schedule_s)):
            raise UserError(f"webhook event {delivery_id} is being delivered right now; "
                            "`tunectl webhooks deliveries` shows how it went")
    return event(engine, delivery_id)


def endpoints(engine: sa.Engine) -> list[WebhookEndpoint]:
    """Every endpoint webhooks were sent to, by URL."""
    with session_scope(engine) as session:
        return rows.endpoints(session)


def enable(engine: sa.Engine, url: str) -> tuple[WebhookEndpoint, bool]:
    """Enable an endpoint a 410 disabled, so that new events go to it again (its dead events
    stay dead: redeliver them); returns it and whether it was disabled."""
    with engine.begin() as conn:
        endpoint = rows.endpoint(conn, endpoint_id(url))
        if endpoint is None:
            raise UserError(f"no webhook endpoint {url!r}; `tunectl webhooks endpoints` lists "
                            "them")
        changed = rows.enable(conn, endpoint.id)
        found = rows.endpoint(conn, endpoint.id)
    assert found is not None
    return found, changed
