"""The only code that writes a deployment's state, and the reads that go with it.

Like a job's, a deployment's state changes by compare-and-set on (state, version), with an
appended ``deployment_transitions`` row in the caller's transaction; a move not in
states.DEPLOYMENT_TRANSITIONS raises IllegalTransition, a lost race StaleTransition, and
neither writes anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from orchestrator.db.models import (
    DEPLOYMENT_HISTORY,
    DEPLOYMENTS,
    Deployment,
    DeploymentTransition,
)
from orchestrator.db.queries import DB, connection
from orchestrator.db.types import utcnow
from orchestrator.errors import IllegalTransition, StaleTransition
from orchestrator.states import DEPLOYMENT_LIVE, DEPLOYMENT_TRANSITIONS, DeploymentState

#: Deployment columns a transition may set besides the state itself.
WRITABLE = frozenset({
    "deployed_model", "provider_status", "error", "capacity", "expires_at", "ready_at",
    "next_run_at", "lease_owner", "lease_expires_at", "attempts", "last_error",
})
TERMINAL = frozenset({DeploymentState.DELETED, DeploymentState.FAILED})
_LIVE = [s.value for s in DEPLOYMENT_LIVE]


def insert(session: Session, deployment: Deployment, *, reason: str,
           now: datetime | None = None) -> None:
    """Store a new deployment in ``creating`` with its first history row (seq 1).

    Raises:
        sqlalchemy.exc.IntegrityError: the job has a live deployment already
            (uq_deployments_live_job).
    """
    now = now or utcnow()
    deployment.state, deployment.version = DeploymentState.CREATING.value, 1
    deployment.created_at = deployment.updated_at = now
    session.add(deployment)
    session.flush()
    session.add(DeploymentTransition(deployment_id=deployment.id, seq=1, from_state=None,
                                     to_state=DeploymentState.CREATING.value, reason=reason,
                                     at=now))


def transition(
    db: DB,
    deployment_id: str,
    *,
    source: DeploymentState,
    target: DeploymentState,
    version: int,
    reason: str,
    now: datetime | None = None,
    lease: str | None = None,
    **fields: Any,
) -> int:
    """Move a deployment from ``source`` (at ``version``) to ``target``; return the new version.

    With ``lease``, the move also requires that lease to still hold the deployment.

    Raises:
        IllegalTransition: ``source → target`` is not in states.DEPLOYMENT_TRANSITIONS.
        StaleTransition: the deployment is not in ``source`` at ``version`` any more.
    """
    if target not in DEPLOYMENT_TRANSITIONS[source]:
        raise IllegalTransition(f"deployment {deployment_id}: {source} → {target} is not an "
                                "allowed transition")
    unknown = set(fields) - WRITABLE
    if unknown:
        raise ValueError(f"transition cannot set {sorted(unknown)}")
    now = now or utcnow()
    values: dict[str, Any] = {**fields, "state": target.value,
                              "version": DEPLOYMENTS.c.version + 1, "updated_at": now}
    if target in TERMINAL:
        values.update(finished_at=now, next_run_at=None, lease_owner=None,
                      lease_expires_at=None)
    guard = [DEPLOYMENTS.c.id == deployment_id, DEPLOYMENTS.c.state == source.value,
             DEPLOYMENTS.c.version == version]
    if lease is not None:
        guard.append(DEPLOYMENTS.c.lease_owner == lease)
    conn = connection(db)
    new_version = conn.execute(
        sa.update(DEPLOYMENTS).where(*guard).values(**values).returning(DEPLOYMENTS.c.version)
    ).scalar_one_or_none()
    if new_version is None:
        raise StaleTransition(f"deployment {deployment_id} is no longer {source} at version "
                              f"{version}; nothing was written")
    conn.execute(sa.insert(DEPLOYMENT_HISTORY).values(
        deployment_id=deployment_id, seq=new_version, from_state=source.value,
        to_state=target.value, provider_status=fields.get("provider_status"), reason=reason,
        at=now))
    return int(new_version)


def live_for_job(db: DB, job_id: str) -> Deployment | None:
    """The job's deployment that may exist at the provider, if any (there is at most one)."""
    row = connection(db).execute(
        sa.select(DEPLOYMENTS).where(DEPLOYMENTS.c.job_id == job_id,
                                     DEPLOYMENTS.c.state.in_(_LIVE))
    ).one_or_none()
    return None if row is None else Deployment(**row._mapping)


def get(db: DB, deployment_id: str) -> Deployment | None:
    """A deployment by id."""
    row = connection(db).execute(
        sa.select(DEPLOYMENTS).where(DEPLOYMENTS.c.id == deployment_id)).one_or_none()
    return None if row is None else Deployment(**row._mapping)


def for_job(session: Session, job_id: str) -> list[Deployment]:
    """Every deployment of a job, oldest first."""
    return list(session.exec(select(Deployment).where(col(Deployment.job_id) == job_id)
                             .order_by(col(Deployment.created_at), col(Deployment.id))))


def history(session: Session, deployment_id: str) -> list[DeploymentTransition]:
    """A deployment's transitions, oldest first."""
    return list(session.exec(
        select(DeploymentTransition)
        .where(col(DeploymentTransition.deployment_id) == deployment_id)
        .order_by(col(DeploymentTransition.seq))))


def listed(session: Session, *, everything: bool = False, limit: int = 200) -> list[Deployment]:
    """Deployments newest first: the live ones, or with ``everything`` also the ended."""
    query = select(Deployment).order_by(col(Deployment.created_at).desc(),
                                        col(Deployment.id).desc()).limit(limit)
    if not everything:
        query = query.where(col(Deployment.state).in_(_LIVE))
    return list(session.exec(query))
