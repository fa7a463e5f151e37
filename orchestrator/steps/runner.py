"""Running one step for one job: taking it up under its lease, the step, and applying its
outcome.

A step message carries (job id, lease token). If the job's lease is no longer that token,
has lapsed, or the job's state is not one the step works, the message is a duplicate or
stale delivery and nothing happens. Otherwise the step runs outside any transaction, and
its outcome is written in one transaction guarded by the job's version and the lease, so
a concurrent cancel or rescue makes a late outcome a no-op; the step then hands the lease
back at once, so whatever changed the job is acted on without waiting for the lease.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog

from orchestrator import metrics
from orchestrator.config import Settings
from orchestrator.db import queries
from orchestrator.db.engine import retry_on_disconnect, session_scope
from orchestrator.db.models import Job
from orchestrator.db.transition import transition
from orchestrator.db.types import new_id, utcnow
from orchestrator.dispatch import Dispatch, send_leased
from orchestrator.errors import (
    DatasetError,
    MissingCredential,
    PermanentProviderError,
    ProviderAuthError,
    RetryableProviderError,
    StaleTransition,
    TunectlError,
    UserError,
)
from orchestrator.notify import deliver
from orchestrator.notify.outbox import Wake
from orchestrator.providers import registry
from orchestrator.providers.base import connect
from orchestrator.providers.http import shared_client
from orchestrator.states import (
    PROVIDER_RESOURCE_LIVE,
    STARTS,
    STEP_FOR_STATE,
    TERMINAL,
    FailureKind,
    State,
    can_move,
)
from orchestrator.steps import STEPS, UNDEPLOY
from orchestrator.steps.outcomes import Advance, Outcome, StepContext

log = structlog.get_logger("tunectl.step")



@dataclass(frozen=True)
class Retry:
    """The step failed in a way worth trying again (the scheduler bounds the attempts)."""

    delay_s: float
    error: str


def retry_delay(settings: Settings, attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with ±10 % jitter, never sooner than the provider asked, and
    never later than ``retry_cap_s`` (a Retry-After of days would park the job)."""
    backoff = settings.retry_base_s * 2 ** min(max(0, attempts - 1), 30)
    wanted = retry_after if retry_after is not None and math.isfinite(retry_after) else 0.0
    return float(min(settings.retry_cap_s, max(wanted, backoff * random.uniform(0.9, 1.1))))


def run_step(
    step: str,
    job_id: str,
    lease: str,
    *,
    settings: Settings,
    engine: sa.Engine,
    dispatch: Dispatch,
    now: Callable[[], datetime] = utcnow,
) -> str:
    """Run ``step`` for ``job_id`` if this message still holds its lease; return what happened.

    The undeploy step works a deployment and the deliver step a webhook delivery: their
    messages carry a deployment id or a delivery id instead.
    """
    if step == UNDEPLOY:
        from orchestrator.steps import undeploy

        return undeploy.run(job_id, lease, settings=settings, engine=engine, now=now)
    if step == deliver.DELIVER:
        return deliver.run(job_id, lease, settings=settings, engine=engine, now=now)
    wake: list[Wake] = []
    try:
        job = retry_on_disconnect(
            lambda: _begin(step, job_id, lease, settings, engine, now(), wake))
    except StaleTransition:
        job, wake = None, []
    deliver.send_now(engine, dispatch, wake, now())
    if job is None:
        log.info("step.skipped", job_id=job_id, step=step,
                 why="lease not held, lapsed, or state moved on (duplicate or stale message)")
        return "skipped"
    with structlog.contextvars.bound_contextvars(job_id=job.id, step=step,
                                                 provider=job.provider):
        started = time.monotonic()
        outcome = _attempt(job, step, settings, engine, now)
        result = _apply(job, lease, outcome, settings, engine, dispatch, now())
        took = time.monotonic() - started
        metrics.STEP_SECONDS.labels(step, job.provider, metrics.step_outcome(result)).observe(took)
        log.info("step.finished", outcome=result, state=job.state,
                 duration_ms=round(took * 1000, 1), provider_status=job.provider_status)
        return result


def _begin(step: str, job_id: str, lease: str, settings: Settings, engine: sa.Engine,
           now: datetime, wake: list[Wake]) -> Job | None:
    """Take the job up under its lease and, for a job still in its waiting state, move it
    to its working state (queued → validating), in one transaction."""
    states = [s.value for s, name in STEP_FOR_STATE.items() if name == step]
    wake.clear()  # a transaction retried on a fresh connection lists its events again
    with engine.begin() as conn:
        job = queries.take_up(conn, job_id, lease=lease, states=states, now=now,
                              lease_s=settings.lease_s)
        if job is None:
            return None
        state = State(job.state)
        if state in STARTS:
            version = transition(conn, job.id, source=state, target=STARTS[state],
                                 version=job.version, reason="picked up by a worker",
                                 now=now, lease=lease, wake=wake)
            job = job.model_copy(update={"state": STARTS[state].value, "version": version})
    return job


def _attempt(job: Job, step: str, settings: Settings, engine: sa.Engine,
             now: Callable[[], datetime]) -> Outcome | Retry:
    """Run the step, turning errors into a failure (permanent) or a retry (transient).

    A credential problem while a provider job or deployment is live (a key rotated or a
    secret missing on one worker) is retried, not failed: failing would stop tunectl
    watching something that goes on billing. It is still bounded by the scheduler's attempts.
    """
    try:
        ctx = StepContext(settings=settings, engine=engine, plugin=registry.get(job.provider),
                          now=now, options=job.spec.get("provider_options") or {})
        return STEPS[step](job, ctx)
    except RetryableProviderError as exc:
        log.warning("step.retryable_error", error=str(exc), retry_after=exc.retry_after)
        return Retry(retry_delay(settings, job.attempts, exc.retry_after), str(exc))
    except (ProviderAuthError, MissingCredential) as exc:
        if State(job.state) not in PROVIDER_RESOURCE_LIVE:
            return failed(exc)
        log.error("step.credential_error", error=str(exc))
        return Retry(retry_delay(settings, job.attempts), str(exc))
    except (PermanentProviderError, UserError) as exc:
        return failed(exc)
    except Exception as exc:  # a bug or an unexpected failure: retry, bounded by the scheduler
        log.exception("step.crashed")
        return Retry(retry_delay(settings, job.attempts), f"{type(exc).__name__}: {exc}")


#: The failure kind of each error a step can fail on (the first matching class wins).
FAILURE_KINDS: tuple[tuple[type[TunectlError], FailureKind], ...] = (
    (DatasetError, FailureKind.DATASET),
    (MissingCredential, FailureKind.MISSING_CREDENTIAL),
    (UserError, FailureKind.SPEC),
    (ProviderAuthError, FailureKind.PROVIDER_AUTH),
    (PermanentProviderError, FailureKind.PROVIDER_REJECTED),
)


def failed(exc: TunectlError) -> Advance:
    """The outcome of a step that failed its job on ``exc``, classified."""
    kind = next(k for cls, k in FAILURE_KINDS if isinstance(exc, cls))
    return Advance(State.FAILED, reason=str(exc),
                   fields={"error": str(exc), "failure_kind": kind.value})


def _apply(job: Job, lease: str, outcome: Outcome | Retry, settings: Settings,
           engine: sa.Engine, dispatch: Dispatch, now: datetime) -> str:
    state = State(job.state)
    if isinstance(outcome, Advance):
        return _advance(job, lease, state, outcome, settings, engine, dispatch, now)
    later = now + timedelta(seconds=outcome.delay_s)
    done = f"retry in {outcome.delay_s:.0f}s" if isinstance(outcome, Retry) else "waiting"
    wake: list[Wake] = []
    released: queries.Released | None
    try:
        with engine.begin() as conn:
            if isinstance(outcome, Retry):  # a webhook meanwhile does not cut the backoff
                released = queries.release_lease(conn, job.id, lease=lease,
                                                 version=job.version, next_run_at=later,
                                                 last_error=outcome.error, unpoke=True)
            else:
                version = job.version
                if (outcome.provider_status and outcome.provider_status != job.provider_status
                        and can_move(state, state)):
                    version = transition(conn, job.id, source=state, target=state,
                                         version=version, now=now, lease=lease, wake=wake,
                                         reason=f"provider status {outcome.provider_status}",
                                         provider_status=outcome.provider_status)
                released = queries.release_lease(
                    conn, job.id, lease=lease, version=version, next_run_at=later,
                    attempts=0, provider_status=outcome.provider_status or job.provider_status)
    except StaleTransition:
        released = None
    if released is None:
        _hand_back(engine, job.id, lease, now)
        return "stale"
    deliver.send_now(engine, dispatch, wake, now)
    if released.poked:  # a provider's webhook said the job changed while this step asked
        _rerun(engine, job.id, settings, dispatch, now)
        return f"{done}; poked, so running again now"
    return done


def _advance(job: Job, lease: str, state: State, outcome: Advance, settings: Settings,
             engine: sa.Engine, dispatch: Dispatch, now: datetime) -> str:
    fields = dict(outcome.fields)
    next_lease = None
    if outcome.target not in TERMINAL:
        next_lease = new_id("lease")
        fields.update(lease_owner=next_lease,
                      lease_expires_at=now + timedelta(seconds=settings.lease_s),
                      next_run_at=now, attempts=0, last_error=None)
    wake: list[Wake] = []
    try:
        with engine.begin() as conn:
            transition(conn, job.id, source=state, target=outcome.target,
                       version=job.version, reason=outcome.reason, data=outcome.data,
                       now=now, lease=lease, wake=wake, **fields)
    except StaleTransition:
        _cancel_orphan(job, outcome, engine, settings)
        _hand_back(engine, job.id, lease, now)
        return "stale"
    deliver.send_now(engine, dispatch, wake, now)
    if next_lease is not None:
        _send(engine, dispatch, STEP_FOR_STATE[outcome.target], job.id, next_lease, now)
    return outcome.target.value


def _rerun(engine: sa.Engine, job_id: str, settings: Settings, dispatch: Dispatch,
           now: datetime) -> None:
    """Claim the job again at once and send its step (unless someone else has it), under a
    poke lease: a provider's webhook caused it."""
    lease = queries.poke_lease()
    with engine.begin() as conn:
        state = queries.claim_job(conn, job_id, owner=lease, now=now,
                                  until=now + timedelta(seconds=settings.lease_s))
    if state is not None:
        _send(engine, dispatch, STEP_FOR_STATE[State(state)], job_id, lease, now)


def _send(engine: sa.Engine, dispatch: Dispatch, step: str, job_id: str, lease: str,
          now: datetime) -> None:
    """Send the job's next step now; if the broker is down, hand the lease back so that
    the scheduler sends it (``_hand_back``)."""
    send_leased(engine, dispatch, [(step, job_id, lease)],
                lambda conn, held_id, held: _release(conn, held_id, held, now))


def _hand_back(engine: sa.Engine, job_id: str, lease: str, now: datetime) -> None:
    """Give the lease back with the job due now, if this step still holds it, so that the
    scheduler acts on the job at once rather than when the lease expires."""
    with engine.begin() as conn:
        _release(conn, job_id, lease, now)


def _release(conn: sa.Connection, job_id: str, lease: str, now: datetime) -> None:
    queries.release_lease(conn, job_id, lease=lease, next_run_at=now)


def _cancel_orphan(job: Job, outcome: Advance, engine: sa.Engine, settings: Settings) -> None:
    """This step created a provider job but lost the race to record it: cancel that job if
    the tunectl job was cancelled meanwhile or ended up with another provider job (a stalled
    run that overlapped its own retry), so nobody pays for it."""
    if outcome.cancel_remote is None:
        return
    with session_scope(engine) as session:
        current = session.get(Job, job.id)
    if current is None:
        return
    cancelled = current.state in (State.CANCELLING, State.CANCELLED)
    superseded = current.provider_job_id not in (None, outcome.cancel_remote)
    if not (cancelled or superseded):
        return
    try:
        provider = connect(registry.get(job.provider), settings, shared_client(settings),
                           job.spec.get("provider_options"))
        provider.cancel_job(outcome.cancel_remote)
        log.warning("step.cancelled_orphan", provider_job_id=outcome.cancel_remote,
                    why="cancelled meanwhile" if cancelled else "superseded by "
                    f"{current.provider_job_id}")
    except TunectlError as exc:
        log.warning("step.cancel_orphan_failed", provider_job_id=outcome.cancel_remote,
                    error=str(exc))
