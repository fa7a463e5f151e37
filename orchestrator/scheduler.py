"""The scheduler: each tick frees expired leases, claims due jobs and sends their steps,
then does the same for deployments to delete and webhook deliveries due.

The database is the truth and the broker only carries wake-ups: a step message that is
lost (broker flushed, worker killed) leaves a lease that expires, and the next tick sends
the step again. When the broker is down, what could not be sent is due again a tick later
(never at once: the scheduler would spin). Any number of schedulers may run; the claim
never hands a job to two, and each pause is jittered so that they do not all wake at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog

from orchestrator import metrics
from orchestrator.config import Settings
from orchestrator.db import queries
from orchestrator.db.engine import session_scope
from orchestrator.db.transition import transition
from orchestrator.db.types import new_id, utcnow
from orchestrator.dispatch import Dispatch, send_leased
from orchestrator.errors import StaleTransition
from orchestrator.notify import deliver
from orchestrator.notify.outbox import Wake
from orchestrator.states import PROVIDER_JOB_LIVE, STEP_FOR_STATE, FailureKind, State
from orchestrator.steps import UNDEPLOY

log = structlog.get_logger("tunectl.scheduler")
#: The shortest pause between ticks, however soon the next job falls due.
MIN_PAUSE_S = 0.05
#: Each pause is longer by a random share of a tick up to this, so that many schedulers
#: spread their wake-ups.
JITTER_SHARE = 0.1


@dataclass(frozen=True)
class TickReport:
    """What one tick did."""

    rescued: int
    dispatched: int
    gave_up: int
    #: Deployments sent to the undeploy step (TTL expired, undeploy requested, orphaned).
    undeploying: int = 0
    #: Webhook deliveries sent to the deliver step.
    delivering: int = 0


class Scheduler:
    """Re-drives every job that is due, from the database."""

    def __init__(self, settings: Settings, engine: sa.Engine, dispatch: Dispatch,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.settings, self.engine, self.dispatch, self.now = settings, engine, dispatch, now

    def tick(self, *, jobs_only: bool = False) -> TickReport:
        """Rescue expired leases, claim and dispatch due jobs in batches, then the
        deployments that must be deleted and the webhook deliveries that are due. With
        ``jobs_only`` (a wake-up between whole ticks, for a job falling due), only claim and
        dispatch due jobs."""
        report = self._jobs(rescue=not jobs_only)
        if jobs_only:
            return report
        counts = []
        for name, duty in (("deployments", self._deployments), ("deliveries", self._deliveries)):
            try:
                counts.append(duty(self.now()))
            except Exception as exc:  # the jobs' report still counts
                log.error(f"scheduler.{name}_failed", error=str(exc))
                counts.append(0)
        return TickReport(report.rescued, report.dispatched, report.gave_up, *counts)

    def _retry_at(self, now: datetime) -> datetime:
        """When work whose message could not be sent is due again: a tick later."""
        return now + timedelta(seconds=self.settings.scheduler_tick_s)

    def _jobs(self, *, rescue: bool) -> TickReport:
        now = self.now()
        rescued = []
        if rescue:
            with session_scope(self.engine) as session:
                rescued = queries.rescue_expired_leases(session, now=now)
        for job_id, state, attempts in rescued:
            log.warning("scheduler.lease_expired", job_id=job_id, state=state, attempts=attempts)
        dispatched = gave_up = 0
        errors: dict[str, str | None] = {}  # a released job keeps its last error

        def release(conn: sa.Connection, job_id: str, held: str) -> None:
            queries.release_lease(conn, job_id, lease=held, next_run_at=self._retry_at(now),
                                  last_error=errors[job_id])

        while True:
            lease = new_id("lease")
            with session_scope(self.engine) as session:
                claimed = queries.claim_due_jobs(
                    session, owner=lease, now=now, limit=self.settings.scheduler_batch,
                    until=now + timedelta(seconds=self.settings.lease_s))
            for job in claimed:
                metrics.PICKUP_LAG.observe(max(0.0, (now - job.next_run_at).total_seconds()))
            spent = [job for job in claimed if job.attempts >= self.settings.max_attempts]
            for job in spent:
                gave_up += self._give_up(job, now)
            due = [job for job in claimed if job.attempts < self.settings.max_attempts]
            errors.update((job.id, job.last_error) for job in due)
            sent = send_leased(self.engine, self.dispatch,
                               [(STEP_FOR_STATE[State(j.state)], j.id, lease) for j in due],
                               release)
            dispatched += sent
            if sent < len(due) or len(claimed) < self.settings.scheduler_batch:
                return TickReport(len(rescued), dispatched, gave_up)

    def _deployments(self, now: datetime) -> int:
        """Free expired deployment leases, then send the undeploy step for every deployment
        that is due. Never gives up on one: a deployment bills until it is deleted."""
        with session_scope(self.engine) as session:
            rescued = queries.rescue_expired_deployment_leases(session, now=now)
        for deployment_id, state, attempts in rescued:
            log.warning("scheduler.deployment_lease_expired", deployment_id=deployment_id,
                        state=state, attempts=attempts)
        lease = new_id("lease")
        with session_scope(self.engine) as session:
            claimed = queries.claim_due_deployments(
                session, owner=lease, now=now, limit=self.settings.scheduler_batch,
                until=now + timedelta(seconds=self.settings.lease_s))
        return send_leased(
            self.engine, self.dispatch, [(UNDEPLOY, d, lease) for d, *_ in claimed],
            lambda conn, d, held: queries.release_deployment_lease(
                conn, d, lease=held, next_run_at=self._retry_at(now), last_error=None))

    def _deliveries(self, now: datetime) -> int:
        """Free expired delivery leases, then send the deliver step for every delivery due,
        in batches."""
        with session_scope(self.engine) as session:
            rescued = queries.rescue_expired_delivery_leases(session, now=now)
        for delivery_id, attempts in rescued:
            log.warning("scheduler.delivery_lease_expired", delivery_id=delivery_id,
                        attempts=attempts)
        sent = 0
        while True:
            lease = new_id("lease")
            with session_scope(self.engine) as session:
                claimed = queries.claim_due_deliveries(
                    session, owner=lease, now=now, limit=self.settings.scheduler_batch,
                    until=now + timedelta(seconds=self.settings.lease_s))
            done = deliver.send_now(self.engine, self.dispatch,
                                    [(delivery_id, lease) for delivery_id in claimed],
                                    self._retry_at(now))
            sent += done
            if done < len(claimed) or len(claimed) < self.settings.scheduler_batch:
                return sent

    def _give_up(self, job: queries.Claimed, now: datetime) -> int:
        step = STEP_FOR_STATE[State(job.state)]
        reason = (f"gave up after {job.attempts} attempts at the {step} step; "
                  f"last error: {job.last_error or 'none recorded'}")
        if job.provider_job_id and State(job.state) in PROVIDER_JOB_LIVE:
            reason += (f"; provider job {job.provider_job_id} may still be running: "
                       "check or cancel it at the provider")
        if State(job.state) is State.DEPLOYING:
            reason += "; the scheduler deletes its deployment, if one was created"
        wake: list[Wake] = []
        try:
            with session_scope(self.engine) as session:
                transition(session, job.id, source=State(job.state), target=State.FAILED,
                           version=job.version, reason=reason, error=reason, now=now,
                           failure_kind=FailureKind.GAVE_UP.value, wake=wake)
        except StaleTransition:
            return 0
        log.error("scheduler.gave_up", job_id=job.id, step=step, reason=reason)
        deliver.send_now(self.engine, self.dispatch, wake, self._retry_at(now))
        return 1

    def pause(self) -> float:
        """Seconds until the next tick: ``scheduler_tick_s``, or less when a job falls due
        sooner, so that a poll is sent when it is due rather than up to a tick later (never
        less than MIN_PAUSE_S); plus a random JITTER_SHARE of a tick at most."""
        tick = self.settings.scheduler_tick_s
        with self.engine.connect() as conn:
            due = queries.next_due(conn)
        pause = tick if due is None else min(
            tick, max(MIN_PAUSE_S, (due - self.now()).total_seconds()))
        return pause + random.uniform(0, JITTER_SHARE * tick)

    def run(self, stop: threading.Event) -> None:
        """Tick every ``scheduler_tick_s`` (sooner when a job falls due sooner) until
        ``stop`` is set."""
        log.info("scheduler.started", tick_s=self.settings.scheduler_tick_s)
        next_tick = 0.0
        while not stop.is_set():
            # Between whole ticks, a wake-up for a job falling due only sends due jobs.
            whole = time.monotonic() >= next_tick
            if whole:
                next_tick = time.monotonic() + self.settings.scheduler_tick_s
            try:
                report = self.tick(jobs_only=not whole)
                if any((report.rescued, report.dispatched, report.gave_up,
                        report.undeploying, report.delivering)):
                    log.info("scheduler.tick", rescued=report.rescued,
                             dispatched=report.dispatched, gave_up=report.gave_up,
                             undeploying=report.undeploying, delivering=report.delivering)
            except sa.exc.OperationalError as exc:
                log.error("scheduler.database_unavailable", error=str(exc).splitlines()[0])
            except Exception:  # a bug must not stop the loop that re-drives every job
                log.exception("scheduler.tick_failed")
            try:
                pause = self.pause()
            except sa.exc.SQLAlchemyError:
                pause = self.settings.scheduler_tick_s
            stop.wait(pause)
        log.info("scheduler.stopped")
