"""Deployment operations shared by every front door (CLI, and later the HTTP API): deploy a
job's tuned model again, undeploy it, list deployments. Each either completes whole or raises
a UserError and writes nothing; the provider calls themselves happen in the deploy and
undeploy steps, so a front door never waits on a provider."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator import jobs as job_ops
from orchestrator.db import deployments as rows
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Deployment, Job
from orchestrator.db.transition import transition
from orchestrator.db.types import utcnow
from orchestrator.errors import StaleTransition, UserError
from orchestrator.providers import registry
from orchestrator.providers.base import deploys
from orchestrator.states import DeploymentState, State

#: Job states `tunectl deploy` starts from: the training is over and produced a model.
DEPLOYABLE = frozenset({State.SUCCEEDED, State.FAILED})


@dataclass(frozen=True)
class Requested:
    """What a deploy or undeploy request did."""

    job: Job
    deployment: Deployment | None
    #: False when the request found the work already asked for.
    changed: bool


def deploy(engine: sa.Engine, job_id: str, *, capacity: int | None = None,
           ttl_hours: float | None = None, now: datetime | None = None) -> Job:
    """Deploy a finished job's tuned model (again): the job goes back to ``deploying`` and
    its deploy step creates the deployment. Options not given come from the spec's deploy
    block, then the defaults."""
    if capacity is not None and capacity < 1:
        raise UserError("--capacity must be at least 1")
    if ttl_hours is not None and ttl_hours <= 0:
        raise UserError("--ttl-hours must be above 0 (leave it out for the default)")
    now = now or utcnow()
    with session_scope(engine) as session:
        job = job_ops.get(session, job_id)
        if not deploys(registry.get(job.provider)):
            raise UserError(f"{job.provider} serves tuned models without a deployment; "
                            f"job {job_id} has nothing to deploy")
        state = State(job.state)
        if job.fine_tuned_model is None or state not in DEPLOYABLE:
            why = ("is still running: it deploys when it succeeds if its spec has a deploy "
                   "block" if state not in DEPLOYABLE else "produced no tuned model")
            raise UserError(f"job {job_id} {why}; nothing to deploy yet")
        live = rows.live_for_job(session, job_id)
        if live is not None:
            raise UserError(f"job {job_id} already has deployment "
                            f"{live.deployed_model or live.id} ({live.state}); "
                            f"`tunectl undeploy {job_id}` first")
        asked: dict[str, Any] = {"capacity": capacity, "ttl_hours": ttl_hours}
        try:
            transition(session, job_id, source=state, target=State.DEPLOYING,
                       version=job.version, now=now, data={"deploy": asked},
                       reason=f"deploy requested for {job.fine_tuned_model}",
                       next_run_at=now, attempts=0, last_error=None, error=None)
        except StaleTransition:
            raise UserError(f"job {job_id} changed while deploying it; try again") from None
        return job_ops.get(session, job_id)


def undeploy(engine: sa.Engine, job_id: str, *, now: datetime | None = None) -> Requested:
    """Ask for the job's live deployment to be deleted: the undeploy step deletes it (or,
    while the job is still deploying, its deploy step does)."""
    now = now or utcnow()
    with session_scope(engine) as session:
        job = job_ops.get(session, job_id)
        live = rows.live_for_job(session, job_id)
        if live is None:
            raise UserError(f"job {job_id} has no deployment to delete; `tunectl deployments "
                            "--all` lists past ones")
        state = DeploymentState(live.state)
        if state is DeploymentState.DELETING:
            return Requested(job, live, changed=False)
        # The deploy step owns the deployment while the job deploys: it deletes it itself.
        due = None if job.state == State.DEPLOYING else now
        try:
            rows.transition(session, live.id, source=state, target=DeploymentState.DELETING,
                            version=live.version, now=now, next_run_at=due,
                            reason="undeploy requested")
        except StaleTransition:
            raise UserError(f"deployment {live.id} changed meanwhile; try again") from None
        return Requested(job, rows.get(session, live.id), changed=True)


def listed(engine: sa.Engine, *, everything: bool = False) -> list[Deployment]:
    """Deployments, newest first: live ones, or every one with ``everything``."""
    with session_scope(engine) as session:
        return rows.listed(session, everything=everything)
