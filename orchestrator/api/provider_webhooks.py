"""Inbound provider webhooks: ``POST /webhooks/{provider}`` (OpenAI today).

A provider that signs webhooks about its jobs (its plugin is a ``WebhookSource``) says here
that a job ended; tunectl then polls that job at once instead of at its next poll (if a
step holds the job right now, that step runs again as soon as it ends). The webhook is only
a wake-up: the poll step asks the provider and records what it says, and a lost one costs
one poll interval. A request is verified before anything happens: unsigned, stale or
wrongly signed ones get 401 and change nothing. A verified one is acted on once: its
``webhook-id`` is remembered in the database (``provider_webhooks_seen``, shared by every
API process) for as long as a replay would still verify, and a replay gets 200 with
``replayed`` and changes nothing. A poll a webhook causes never counts as one of the job's
attempts, and a job waiting to retry (a provider's Retry-After) keeps its backoff, so no
webhook can fail a job or hurry it past a rate limit.

Answers: 200 (verified; ``jobs``: the jobs polled now, if any), 401 (not verified), 404 (no such
provider, or it sends no webhooks), 413 (body over 64 KiB), 503 (no signing secret set).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from orchestrator.api.jobs import ApiState, api_state
from orchestrator.api.problems import problem, responses
from orchestrator.config import Settings
from orchestrator.db import queries
from orchestrator.db.types import utcnow
from orchestrator.dispatch import Dispatch, send_leased
from orchestrator.errors import MissingCredential, UnknownProvider, WebhookRejected
from orchestrator.providers import registry
from orchestrator.providers.base import WebhookSource
from orchestrator.states import PROVIDER_JOB_LIVE, STEP_FOR_STATE, State

log = structlog.get_logger("tunectl.api")
router = APIRouter(tags=["provider webhooks"])

MAX_BODY_BYTES = 64 * 1024
#: How long a webhook's id is remembered: a Standard Webhooks timestamp verifies within 5
#: minutes either side of the receiver's clock, so a replay can come up to 10 minutes
#: after the original did.
REPLAY_WINDOW_S = 600.0
#: Job states whose step asks the provider about its job: a webhook makes it run now.
POKED = sorted(s.value for s in PROVIDER_JOB_LIVE)


def dispatch_dep() -> Dispatch:
    """Sends step messages through the Celery broker (tests override this dependency)."""
    from workers.tasks import dispatch

    return dispatch


class Receipt(BaseModel):
    """A verified webhook, and the jobs it made tunectl poll now."""

    received: bool
    event_type: str
    jobs: list[str]
    #: This webhook-id was received already: nothing was done again.
    replayed: bool = False


@router.post("/webhooks/{provider}", response_model=Receipt, summary="A provider's webhook",
             responses=responses(401, 404, 413, 503))
async def provider_webhook(
    provider: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_\-]{0,39}$",
                                  description="The provider's name (openai).")],
    request: Request, state: Annotated[ApiState, Depends(api_state)],
    dispatch: Annotated[Dispatch, Depends(dispatch_dep)],
) -> JSONResponse:
    """A provider's signed webhook about one of its jobs."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return problem(413, f"the body is over {MAX_BODY_BYTES} bytes")
    return await run_in_threadpool(receive, provider, bytes(body), request.headers,
                                   state.settings, state.engine, dispatch)


def receive(provider: str, body: bytes, headers: Mapping[str, str], settings: Settings,
            engine: sa.Engine, dispatch: Dispatch) -> JSONResponse:
    """Verify the webhook, then lease each job it names and send its step now."""
    try:
        plugin = registry.get(provider)
    except UnknownProvider as exc:
        return problem(404, str(exc))
    if not isinstance(plugin, WebhookSource):
        return problem(404, f"{provider} sends no webhooks that tunectl reads")
    try:
        hook = plugin.verify_webhook(settings, body, {k.lower(): v for k, v in headers.items()})
    except MissingCredential as exc:
        log.error("webhook_in.no_secret", provider=provider, error=str(exc))
        return problem(503, f"tunectl cannot verify {provider} webhooks: {exc}")
    except WebhookRejected as exc:
        log.warning("webhook_in.rejected", provider=provider, error=str(exc))
        return problem(401, str(exc))
    poked: list[queries.Poked] = []
    now = utcnow()
    lease = queries.poke_lease()
    with engine.begin() as conn:
        fresh = queries.remember_webhook(conn, provider=provider, webhook_id=hook.event_id,
                                         now=now, keep_s=REPLAY_WINDOW_S)
        if fresh and hook.provider_job_id is not None:
            poked = queries.poke_jobs(
                conn, provider=provider, provider_job_id=hook.provider_job_id, states=POKED,
                owner=lease, now=now, until=now + timedelta(seconds=settings.lease_s))
    if not fresh:
        log.warning("webhook_in.replayed", provider=provider, event_id=hook.event_id,
                    event_type=hook.event_type, why="this webhook-id was received already")
        return JSONResponse(Receipt(received=True, event_type=hook.event_type, jobs=[],
                                    replayed=True).model_dump())
    # A job a step holds runs again as soon as that step gives the lease back; if the
    # broker is down, the scheduler sends the others.
    send_leased(engine, dispatch,
                [(STEP_FOR_STATE[State(j.state)], j.id, lease) for j in poked if j.claimed],
                lambda conn, job_id, held: queries.release_lease(
                    conn, job_id, lease=held, next_run_at=now))
    jobs = [job.id for job in poked]
    log.info("webhook_in.received", provider=provider, event_id=hook.event_id,
             event_type=hook.event_type, provider_job_id=hook.provider_job_id, polled=jobs,
             held_by_a_step=[job.id for job in poked if not job.claimed])
    return JSONResponse(Receipt(received=True, event_type=hook.event_type, jobs=jobs)
                        .model_dump())
