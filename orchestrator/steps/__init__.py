"""The lifecycle steps, by name: each reads a job, does one short piece of I/O, returns an
outcome. ``runner.run_step`` is how a worker runs one. ``undeploy`` is the one step that
works a deployment rather than a job (steps/undeploy.py); the scheduler sends it too."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.db.models import Job
from orchestrator.steps import cancel, deploy, finalize, poll, submit, upload, validate
from orchestrator.steps.outcomes import Outcome, StepContext

STEPS: dict[str, Callable[[Job, StepContext], Outcome]] = {
    "validate": validate.run,
    "upload": upload.run,
    "submit": submit.run,
    "poll": poll.run,
    "finalize": finalize.run,
    "deploy": deploy.run,
    "cancel": cancel.run,
}

#: The step that deletes a deployment (its message carries a deployment id, not a job id).
UNDEPLOY = "undeploy"
