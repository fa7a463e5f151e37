"""One thin Celery task per step, named ``tunectl.step.<step>``, and the webhook delivery
task ``tunectl.notify.deliver`` (names live in queued messages: renaming one is a breaking
change). Each task only runs its step through ``orchestrator.steps.runner``; none sleeps on
a provider or an endpoint."""

from __future__ import annotations

from typing import Any

from orchestrator.config import STEP_SHARE_OF_LEASE, get_settings
from orchestrator.db.engine import get_engine
from orchestrator.notify.deliver import DELIVER
from orchestrator.steps import STEPS, UNDEPLOY
from orchestrator.steps.runner import run_step
from workers.app import QUEUE, app


def task_name(step: str) -> str:
    """The Celery task that runs ``step``."""
    return "tunectl.notify.deliver" if step == DELIVER else f"tunectl.step.{step}"


def dispatch(step: str, job_id: str, lease: str) -> None:
    """Send the message that runs ``step`` for ``job_id`` under ``lease``."""
    app.send_task(task_name(step), args=[job_id, lease], queue=QUEUE)


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
