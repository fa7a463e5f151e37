"""Inbound provider webhooks: ``POST /webhooks/{provider}`` (OpenAI today).

A provider that signs webhooks about its jobs (its plugin is a ``WebhookSource``) says here
that a job ended; tunectl then polls that job at once instead of at its next poll (if a
step holds the job right now, that step runs again as soon as it ends). The webhook is only
a wake-up: the poll step asks the provider and records what it says, so a
forged or replayed webhook could at most cause one extra poll, and a lost one costs one
poll interval. A request is verified before anything happens: unsigned, stale or wrongly
signed ones get 401 and change nothing.

Answers: 200 (verified; ``jobs``: the jobs polled now, if any), 401 (not verified), 404 (no such
provider, or it sends no webhooks), 413 (body over 64 KiB), 503 (no signing secret set).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from orchestrator.config import Settings, get_settings
from orchestrator.db import queries
from orchestrator.db.engine import get_engine
from orchestrator.db.types import new_id, utcnow
from orchestrator.errors import MissingCredential, UnknownProvider, WebhookRejected
from orchestrator.providers import registry
from orchestrator.providers.base import WebhookSource
from orchestrator.states import PROVIDER_JOB_LIVE, STEP_FOR_STATE, State
from orchestrator.steps.runner import Dispatch

log = structlog.get_logger("tunectl.api")
router = APIRouter(tags=["provider webhooks"])

MAX_BODY_BYTES = 64 * 1024
#: Job states whose step asks the provider about its job: a webhook makes it run now.
POKED = sorted(s.value for s in PROVIDER_JOB_LIVE)


def settings_dep() -> Settings:
    """The process's settings (tests override this dependency)."""
    return get_settings()


def engine_dep(settings: Annotated[Settings, Depends(settings_dep)]) -> sa.Engine:
    """The process's database engine."""
    return get_engine(settings.database_url)


def dispatch_dep() -> Dispatch:
    """Sends step messages through the Celery broker."""
    from workers.tasks import dispatch

    return dispatch


def _answer(status: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status)


@router.post("/webhooks/{provider}", responses={
    200: {"description": "Verified; `jobs` lists the jobs polled now."},
    401: {"description": "Unsigned, stale or wrongly signed: nothing changed."},
    404: {"description": "No such provider, or it sends no webhooks."},
    413: {"description": "Body over 64 KiB."},
    503: {"description": "The provider's webhook signing secret is not configured."},
})
async def provider_webhook(
    provider: str, request: Request,
    settings: Annotated[Settings, Depends(settings_dep)],
    engine: Annotated[sa.Engine, Depends(engine_dep)],
    dispatch: Annotated[Dispatch, Depends(dispatch_dep)],
) -> JSONResponse:
    """A provider's signed webhook about one of its jobs."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _answer(413, error=f"the body is over {MAX_BODY_BYTES} bytes")
    return await run_in_threadpool(receive, provider, bytes(body), request.headers, settings,
                                   engine, dispatch)


def receive(provider: str, body: bytes, headers: Mapping[str, str], settings: Settings,
            engine: sa.Engine, dispatch: Dispatch) -> JSONResponse:
    """Verify the webhook, then lease each job it names and send its step now."""
    try:
        plugin = registry.get(provider)
    except UnknownProvider as exc:
        return _answer(404, error=str(exc))
    if not isinstance(plugin, WebhookSource):
        return _answer(404, error=f"{provider} sends no webhooks that tunectl reads")
    try:
        hook = plugin.verify_webhook(settings, body, {k.lower(): v for k, v in headers.items()})
    except MissingCredential as exc:
        log.error("webhook_in.no_secret", provider=provider, error=str(exc))
        return _answer(503, error=f"tunectl cannot verify {provider} webhooks: {exc}")
    except WebhookRejected as exc:
        log.warning("webhook_in.rejected", provider=provider, error=str(exc))
        return _answer(401, error=str(exc))
    poked: list[queries.Poked] = []
    if hook.provider_job_id is not None:
        now = utcnow()
        lease = new_id("lease")
        with engine.begin() as conn:
            poked = queries.poke_jobs(
                conn, provider=provider, provider_job_id=hook.provider_job_id, states=POKED,
                owner=lease, now=now, until=now + timedelta(seconds=settings.lease_s))
        for job in poked:
            if not job.claimed:
                continue  # its step runs again as soon as it gives the lease back
            try:
                dispatch(STEP_FOR_STATE[State(job.state)], job.id, lease)
            except Exception as exc:  # the broker is down: the scheduler sends it instead
                log.warning("webhook_in.dispatch_failed", job_id=job.id, error=str(exc))
                with engine.begin() as conn:
                    queries.release_lease(conn, job.id, lease=lease, next_run_at=now)
    jobs = [job.id for job in poked]
    log.info("webhook_in.received", provider=provider, event_id=hook.event_id,
             event_type=hook.event_type, provider_job_id=hook.provider_job_id, polled=jobs,
             held_by_a_step=[job.id for job in poked if not job.claimed])
    return _answer(200, received=True, event_type=hook.event_type, jobs=jobs)
