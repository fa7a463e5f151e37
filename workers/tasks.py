"""One thin Celery task per step, named ``tunectl.step.<step>``, the webhook delivery task
``tunectl.notify.deliver``, and ``tunectl.submit``, the task any producer on the broker can
``send_task`` a spec to (names live in queued messages: renaming one is a breaking change).
Each step task only runs its step through ``orchestrator.steps.runner``; none sleeps on a
provider or an endpoint."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog

from orchestrator import jobs as job_ops
from orchestrator.blobs import BlobStore
from orchestrator.config import STEP_SHARE_OF_LEASE, check_project, get_settings
from orchestrator.db.engine import get_engine
from orchestrator.errors import BlobStoreError, SpecError, UserError
from orchestrator.notify.deliver import DELIVER
from orchestrator.specs import parse_spec
from orchestrator.steps import STEPS, UNDEPLOY
from orchestrator.steps.runner import run_step
from workers.app import NOTIFY_QUEUE, QUEUE, app

#: The documented name producers send specs to (docs/api.md, "Queue submission").
SUBMIT_TASK = "tunectl.submit"
log = structlog.get_logger("tunectl.submit")


def task_name(step: str) -> str:
    """The Celery task that runs ``step``."""
    return "tunectl.notify.deliver" if step == DELIVER else f"tunectl.step.{step}"


def dispatch(step: str, job_id: str, lease: str) -> None:
    """Send the message that runs ``step`` for ``job_id`` under ``lease`` (on its queue:
    deliveries on ``tunectl.notify``, everything else on ``tunectl``)."""
    app.send_task(task_name(step), args=[job_id, lease],
                  queue=NOTIFY_QUEUE if step == DELIVER else QUEUE)


def _make_task(step: str) -> Any:
    # For the undeploy step, ``job_id`` is a deployment id; for deliver, a delivery id (the
    # message shape is the same).
    def task(job_id: str, lease: str) -> str:
        settings = get_settings()
        return run_step(step, job_id, lease, settings=settings,
                        engine=get_engine(settings.database_url), dispatch=dispatch)

    task.__name__ = task.__qualname__ = f"step_{step}"
    task.__doc__ = f"Run the {step} step for one job."
    options: dict[str, Any] = {}
    if step == DELIVER:  # an attempt never outlives its delivery's lease
        options["time_limit"] = get_settings().webhook_lease_s * STEP_SHARE_OF_LEASE
    return app.task(name=task_name(step), **options)(task)


TASKS = {step: _make_task(step) for step in (*STEPS, UNDEPLOY, DELIVER)}


@app.task(name=SUBMIT_TASK, autoretry_for=(sa.exc.OperationalError, BlobStoreError),  # type: ignore[untyped-decorator]
          retry_backoff=True, max_retries=10)
def submit(spec: dict[str, Any], project: str | None = None) -> str | None:
    """Queue a job from a spec another service sent (``send_task``); see docs/api.md.

    Its datasets must already be in the blob store, named ``sha256:<hex>``, and it must
    carry an ``idempotency_key`` (a message may be delivered twice). Returns the job's id;
    a refused spec is logged (``submit.rejected``) and dropped, since sending it again
    cannot help.
    """
    settings = get_settings()
    source = f"the queue ({SUBMIT_TASK})"
    try:
        project = settings.default_project if project is None else \
            check_project(project, f"{source}: project")
        parsed = parse_spec(spec, source)
        if not parsed.idempotency_key:
            raise SpecError(source, "idempotency_key", "is required for a queued submit: "
                            "a message may be delivered twice")
        blobs = BlobStore.from_settings(settings)
        result = job_ops.submit(get_engine(settings.database_url), blobs, parsed,
                                source=source, project=project,
                                datasets=job_ops.referenced(blobs, parsed, source),
                                settings=settings)
    except UserError as exc:
        log.error("submit.rejected", error=str(exc), project=str(project)[:80])
        return None
    log.info("submit.queued", job_id=result.job.id, created=result.created,
             project=result.job.project)
    return result.job.id
