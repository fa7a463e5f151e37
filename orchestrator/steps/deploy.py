"""The deploy step: deploy the job's tuned model once, then poll the deployment until it
serves (→ succeeded) or fails (→ failed, the tuned model kept for `tunectl deploy`).

The deployment row is written before the provider is asked, so a worker killed at any point
leaves a record; a retry asks the provider for a deployment of the tuned model before it
creates one, and a run that lost a race to record its deployment deletes its duplicate.
Nothing this step creates is left billing: a failed deployment, or one that does not serve
within ``deploy_timeout_s``, is deleted before the job fails.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from orchestrator.db import deployments as rows
from orchestrator.db.engine import session_scope
from orchestrator.db.models import HISTORY, Deployment, Job
from orchestrator.db.types import new_id
from orchestrator.errors import StaleTransition
from orchestrator.providers.base import (
    Deployer,
    DeploymentRequest,
    DeploymentStatus,
    RemoteDeployment,
    deployer,
)
from orchestrator.states import DeploymentState, FailureKind, State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext, Wait

log = structlog.get_logger("tunectl.step")
D = DeploymentState


#: How soon to look again when the deployment row changed under this step (an undeploy).
RACE_WAIT_S = 1.0


def run(job: Job, ctx: StepContext) -> Outcome:
    """One look at (or one creation of) the job's deployment; never sleeps."""
    try:
        return _run(job, ctx)
    except StaleTransition:
        return Wait(RACE_WAIT_S)  # the row moved meanwhile (an undeploy): decide again


def _run(job: Job, ctx: StepContext) -> Outcome:
    model = job.fine_tuned_model
    assert model is not None, "deploy runs only for a job with a tuned model"
    client = deployer(ctx.provider)
    row = _live_row(job, ctx)
    if row.state == D.DELETING:
        return _stop(job, ctx, client, row)
    if row.deployed_model is None:
        remote: RemoteDeployment | None = client.find_deployment(model)
        verb = "found the deployment an earlier attempt created"
        if remote is None:
            remote = client.create_deployment(DeploymentRequest(job.id, model, row.capacity))
            verb = "created deployment"
        row, remote = _record(ctx, client, row, remote, verb)
    else:
        remote = client.get_deployment(row.deployed_model)
    return _follow(job, ctx, client, row, remote)


def options(job: Job, ctx: StepContext) -> tuple[int, float | None]:
    """(capacity, ttl hours) of the deployment: those `tunectl deploy` asked for, else the
    spec's ``deploy`` block, else capacity 1 and ``deploy_ttl_hours`` (0: no expiry)."""
    with ctx.engine.connect() as conn:
        asked = conn.execute(
            sa.select(HISTORY.c.data)
            .where(HISTORY.c.job_id == job.id, HISTORY.c.to_state == State.DEPLOYING.value,
                   HISTORY.c.from_state != State.DEPLOYING.value)
            .order_by(HISTORY.c.seq.desc()).limit(1)
        ).scalar_one_or_none() or {}
    spec: dict[str, Any] = job.spec.get("deploy") or {}
    wanted: dict[str, Any] = {**spec, **{k: v for k, v in (asked.get("deploy") or {}).items()
                                          if v is not None}}
    ttl = wanted.get("ttl_hours") or ctx.settings.deploy_ttl_hours or None
    return int(wanted.get("capacity") or 1), (float(ttl) if ttl else None)


def _live_row(job: Job, ctx: StepContext) -> Deployment:
    """The job's live deployment row, recorded now (``creating``) if there is none."""
    with ctx.engine.connect() as conn:
        row = rows.live_for_job(conn, job.id)
    if row is not None:
        return row
    assert job.fine_tuned_model is not None
    now = ctx.now()
    capacity, ttl = options(job, ctx)
    row = Deployment(id=new_id("dep"), job_id=job.id, provider=job.provider,
                     account=ctx.provider.account, model=job.fine_tuned_model,
                     capacity=capacity, ttl_hours=ttl,
                     expires_at=now + timedelta(hours=ttl) if ttl else None)
    lifetime = f"ttl {ttl:g} h" if ttl else "no ttl: until undeployed"
    try:
        with session_scope(ctx.engine) as session:
            rows.insert(session, row, now=now, reason=f"deploy {job.fine_tuned_model} for job "
                        f"{job.id} (capacity {capacity}, {lifetime})")
    except sa.exc.IntegrityError:
        # An overlapping run of this step recorded one first (uq_deployments_live_job).
        with ctx.engine.connect() as conn:
            found = rows.live_for_job(conn, job.id)
        if found is None:
            raise
        return found
    return row


def _record(ctx: StepContext, client: Deployer, row: Deployment, remote: RemoteDeployment,
            verb: str) -> tuple[Deployment, RemoteDeployment | None]:
    """Record the provider's deployment on the row (creating → deploying). If an
    overlapping run recorded another one first, delete this run's duplicate."""
    try:
        with ctx.engine.begin() as conn:
            version = rows.transition(
                conn, row.id, source=D.CREATING, target=D.DEPLOYING, version=row.version,
                reason=f"{verb} {remote.id} ({remote.provider_status})", now=ctx.now(),
                deployed_model=remote.id, provider_status=remote.provider_status)
        return row.model_copy(update={"state": D.DEPLOYING.value, "version": version,
                                      "deployed_model": remote.id,
                                      "provider_status": remote.provider_status}), remote
    except StaleTransition:
        with ctx.engine.connect() as conn:
            current = rows.get(conn, row.id)
        assert current is not None
        if current.deployed_model != remote.id:
            log.warning("step.deleted_duplicate_deployment", deployment=remote.id,
                        recorded=current.deployed_model)
            client.delete_deployment(remote.id)
        if current.deployed_model is None:
            return current, None
        return current, client.get_deployment(current.deployed_model)


def _follow(job: Job, ctx: StepContext, client: Deployer, row: Deployment,
            remote: RemoteDeployment | None) -> Outcome:
    """Act on what the provider says about the recorded deployment."""
    model, now = job.fine_tuned_model, ctx.now()
    if row.state not in (D.DEPLOYING, D.RUNNING):
        return Wait(ctx.settings.poll_interval_s)  # moved on meanwhile: look again
    retry = f"the tuned model {model} is kept: retry with `tunectl deploy {job.id}`"
    if remote is None or remote.status is DeploymentStatus.GONE:
        gone = f"deployment {row.deployed_model} of {model} was deleted at the provider"
        with ctx.engine.begin() as conn:
            _end(conn, row, D.DELETED, gone, now)
        reason = f"{gone} before it served; {retry}"
        return _failed(reason)
    if remote.status is DeploymentStatus.FAILED:
        client.delete_deployment(remote.id)  # a failed deployment must not linger
        why = remote.error or "the provider gave no reason"
        with ctx.engine.begin() as conn:
            _end(conn, row, D.FAILED, f"failed at the provider: {why}; deleted it", now,
                 error=why, provider_status=remote.provider_status)
        reason = f"deployment {remote.id} of {model} failed: {why}; {retry}"
        return _failed(reason, provider_status=remote.provider_status)
    if remote.status is DeploymentStatus.SERVING:
        return _serving(job, ctx, row, remote, now)
    waited = (now - row.created_at).total_seconds()
    if row.state == D.DEPLOYING and waited > ctx.settings.deploy_timeout_s:
        client.delete_deployment(remote.id)
        why = (f"did not serve within {ctx.settings.deploy_timeout_s:g} s "
               f"(still {remote.provider_status})")
        with ctx.engine.begin() as conn:
            _end(conn, row, D.FAILED, f"{why}; deleted it", now, error=why,
                 provider_status=remote.provider_status)
        reason = f"deployment {remote.id} of {model} {why}; deleted it; {retry}"
        return _failed(reason)
    if row.state == D.DEPLOYING and remote.provider_status != row.provider_status:
        with ctx.engine.begin() as conn:
            rows.transition(conn, row.id, source=D.DEPLOYING, target=D.DEPLOYING,
                            version=row.version, now=now,
                            reason=f"provider status {remote.provider_status}",
                            provider_status=remote.provider_status)
    return Wait(ctx.settings.poll_interval_s, provider_status=remote.provider_status)


def _failed(reason: str, **fields: Any) -> Advance:
    """The job fails on its deployment (the tuned model is kept for `tunectl deploy`)."""
    return Advance(State.FAILED, reason=reason, fields={
        **fields, "error": reason, "failure_kind": FailureKind.DEPLOYMENT_FAILED.value})


def _serving(job: Job, ctx: StepContext, row: Deployment, remote: RemoteDeployment,
             now: datetime) -> Outcome:
    """The deployment serves: the row goes running (due at its expiry), the job succeeds."""
    if row.state == D.DEPLOYING:
        with ctx.engine.begin() as conn:
            rows.transition(conn, row.id, source=D.DEPLOYING, target=D.RUNNING,
                            version=row.version, now=now, ready_at=now,
                            next_run_at=row.expires_at, provider_status=remote.provider_status,
                            reason=f"serving at capacity {remote.capacity}"
                            + (f"; expires {row.expires_at:%Y-%m-%d %H:%M:%S} UTC"
                               if row.expires_at else "; no ttl"))
    deployment = {"id": row.id, "deployed_model": remote.id, "capacity": remote.capacity,
                  "expires_at": row.expires_at.isoformat() if row.expires_at else None}
    result = {**job.result, "deployment": deployment,
              "model_ref": {"provider": job.provider, "model": remote.id}}
    return Advance(State.SUCCEEDED,
                   reason=f"deployment {remote.id} serves {job.fine_tuned_model} at capacity "
                   f"{remote.capacity}: clients call model {remote.id}",
                   fields={"deployed_model": remote.id, "provider_status":
                           remote.provider_status, "result": result})


def _stop(job: Job, ctx: StepContext, client: Deployer, row: Deployment) -> Outcome:
    """`tunectl undeploy` while the deployment was starting: delete it, keep the model."""
    assert job.fine_tuned_model is not None
    target = row.deployed_model
    if target is None:
        found = client.find_deployment(job.fine_tuned_model)
        target = found.id if found else None
    if target is not None:
        client.delete_deployment(target)
    with ctx.engine.begin() as conn:
        rows.transition(conn, row.id, source=D.DELETING, target=D.DELETED, version=row.version,
                        now=ctx.now(), reason=f"deleted {target} at the provider before it "
                        "served" if target else "nothing had been created at the provider")
    return Advance(State.SUCCEEDED, fields={"deployed_model": None},
                   data={"event": "undeployed", "deployment_id": row.id,
                         "deployed_model": target, "model": row.model},
                   reason=f"undeploy requested while deploying: "
                   f"{f'deployment {target} deleted' if target else 'no deployment was created'}"
                   f"; tuned model {job.fine_tuned_model} is kept")


def _end(conn: sa.Connection, row: Deployment, target: DeploymentState, reason: str,
         now: datetime, **fields: Any) -> None:
    """Move a starting deployment to an end (through deleting for deleted)."""
    version, state = row.version, DeploymentState(row.state)
    if target is D.FAILED and state is D.RUNNING:
        target = D.DELETED  # it served once: it ends deleted, not failed
    if target is D.DELETED:
        version = rows.transition(conn, row.id, source=state, target=D.DELETING,
                                  version=version, now=now, reason=reason, **fields)
        state, fields = D.DELETING, {}
    rows.transition(conn, row.id, source=state, target=target, version=version, now=now,
                    reason=reason, **fields)
