"""One thin Celery task per step, named ``tunectl.step.<step>`` (names live in queued
messages: renaming one is a breaking change). Each task only runs the step through
``orchestrator.steps.runner``; none sleeps on a provider."""

from __future__ import annotations

from typing import Any

from orchestrator.config import get_settings
from orchestrator.db.engine import get_engine
from orchestrator.steps import STEPS, UNDEPLOY
from orchestrator.steps.runner import run_step
from workers.app import QUEUE, app


def dispatch(step: str, job_id: str, lease: str) -> None:
    """Send the message that runs ``step`` for ``job_id`` under ``lease``."""
    app.send_task(f"tunectl.step.{step}", args=[job_id, lease], queue=QUEUE)


def _make_task(step: str) -> Any:
    # For the undeploy step, ``job_id`` is a deployment id (the message shape is the same).
    def task(job_id: str, lease: str) -> str:
        settings = get_settings()
        return run_step(step, job_id, lease, settings=settings,
                        engine=get_engine(settings.database_url), dispatch=dispatch)

    task.__name__ = task.__qualname__ = f"step_{step}"
    task.__doc__ = f"Run the {step} step for one job."
    return app.task(name=f"tunectl.step.{step}")(task)


TASKS = {step: _make_task(step) for step in (*STEPS, UNDEPLOY)}
