"""The undeploy step: delete one deployment at its provider and record it, on the
deployment and in its job's history.

The scheduler sends it for a deployment whose TTL expired, whose undeploy was requested,
or whose job no longer wants it (the job failed, or gave up, while a deployment existed).
It never gives up: a deployment bills until it is deleted, so every failure, even a
permanent-looking one, is retried with backoff (capped at ``retry_cap_s``), and
``deployments.last_error`` and the logs say why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog

from orchestrator.config import Settings
from orchestrator.db import deployments as rows
from orchestrator.db import queries
from orchestrator.db.models import JOBS, Deployment
from orchestrator.db.transition import transition
from orchestrator.db.types import utcnow
from orchestrator.errors import ProviderError
from orchestrator.providers import registry
from orchestrator.providers.base import deployer
from orchestrator.providers.http import shared_client
from orchestrator.states import DeploymentState, State

log = structlog.get_logger("tunectl.step")
D = DeploymentState
#: Job states whose history records a deployment being deleted (a self-transition).
RECORDED_ON = frozenset({State.SUCCEEDED, State.FAILED})


def run(deployment_id: str, lease: str, *, settings: Settings, engine: sa.Engine,
        now: Callable[[], datetime] = utcnow) -> str:
    """Delete the deployment if this message still holds its lease; return what happened."""
    with engine.begin() as conn:
        row = queries.take_up_deployment(conn, deployment_id, lease=lease, now=now(),
                                         lease_s=settings.lease_s)
    if row is None:
        log.info("step.skipped", deployment_id=deployment_id, step="undeploy",
                 why="lease not held or lapsed (duplicate or stale message)")
        return "skipped"
    with structlog.contextvars.bound_contextvars(job_id=row.job_id, step="undeploy",
                                                 provider=row.provider,
                                                 deployment_id=row.id):
        started = time.monotonic()
        try:
            outcome = _delete(row, lease, settings, engine, now)
        except Exception as exc:  # retried whatever it is: the deployment may be billing
            from orchestrator.steps.runner import retry_delay

            retry_after = exc.retry_after if isinstance(exc, ProviderError) else None
            delay = retry_delay(settings, row.attempts, retry_after)
            if isinstance(exc, ProviderError):
                log.error("step.undeploy_failed", error=str(exc), retry_in_s=round(delay, 1))
            else:
                log.exception("step.crashed")
            with engine.begin() as conn:
                queries.release_deployment_lease(
                    conn, row.id, lease=lease, next_run_at=now() + timedelta(seconds=delay),
                    last_error=f"{type(exc).__name__}: {exc}")
            outcome = f"retry in {delay:.0f}s"
        log.info("step.finished", outcome=outcome,
                 duration_ms=round((time.monotonic() - started) * 1000, 1))
        return outcome


def _delete(row: Deployment, lease: str, settings: Settings, engine: sa.Engine,
            now: Callable[[], datetime]) -> str:
    state = DeploymentState(row.state)
    with engine.connect() as conn:
        job_state = conn.execute(sa.select(JOBS.c.state).where(JOBS.c.id == row.job_id)
                                 ).scalar_one()
    if state is D.DELETING:
        why = "undeploy requested"
    elif state is D.RUNNING and row.expires_at is not None and row.expires_at <= now():
        why = f"its ttl of {row.ttl_hours:g} h expired" if row.ttl_hours else "it expired"
    else:
        why = f"its job is {job_state} and no longer wants it"
    version = row.version
    if state is not D.DELETING:
        with engine.begin() as conn:
            version = rows.transition(conn, row.id, source=state, target=D.DELETING,
                                      version=version, now=now(), lease=lease, reason=why)
    provider = registry.get(row.provider).connect(settings, shared_client(settings))
    client = deployer(provider)
    if provider.account != row.account:
        log.warning("step.undeploy_other_account", why="the configured key is not the one "
                    "that created the deployment; deleting with it anyway")
    target = row.deployed_model
    if target is None:  # recorded, but the creation may have landed before a crash
        found = client.find_deployment(row.model)
        target = found.id if found else None
    if target is not None:
        client.delete_deployment(target)
    with engine.begin() as conn:
        at = now()
        rows.transition(conn, row.id, source=D.DELETING, target=D.DELETED, version=version,
                        now=at, lease=lease,
                        reason=f"deleted {target} at the provider ({why})" if target
                        else f"nothing had been created at the provider ({why})")
        _record_on_job(conn, row, target, why, at)
    return "deleted"


def _record_on_job(conn: sa.Connection, row: Deployment, target: str | None, why: str,
                   at: datetime) -> None:
    """Write the deletion into the job's history (``succeeded → succeeded`` or
    ``failed → failed``, with ``data.event = "undeployed"``), and clear the job's deployed
    model if it was this one."""
    job = conn.execute(sa.select(JOBS.c.state, JOBS.c.version, JOBS.c.deployed_model)
                       .where(JOBS.c.id == row.job_id)).one()
    state = State(job.state)
    if state not in RECORDED_ON:
        return
    fields = {"deployed_model": None} if job.deployed_model in (target, None) else {}
    what = f"deployment {target} of {row.model}" if target else f"deployment {row.id}"
    transition(conn, row.job_id, source=state, target=state, version=job.version, now=at,
               reason=f"{what} deleted: {why}",
               data={"event": "undeployed", "deployment_id": row.id,
                     "deployed_model": target, "model": row.model},
               **fields)
