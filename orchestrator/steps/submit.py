"""The submit step: create the provider job once, tagged with the tunectl job id."""

from __future__ import annotations

from typing import Any

from orchestrator.db.models import Job
from orchestrator.providers.base import JobRequest
from orchestrator.states import State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext


def run(job: Job, ctx: StepContext) -> Outcome:
    """Find the provider job an earlier attempt created, or create it."""
    assert job.training_file_id is not None, "submit runs only after upload"
    spec: dict[str, Any] = job.spec
    remote = ctx.provider.find_job(job.id)
    verb = "found the provider job an earlier attempt created"
    if remote is None:
        remote = ctx.provider.create_job(JobRequest(
            job_id=job.id,
            base_model=job.base_model,
            method=job.method,
            training_file_id=job.training_file_id,
            validation_file_id=job.validation_file_id,
            hyperparameters=spec.get("hyperparameters") or {},
            suffix=spec.get("suffix"),
            labels=job.labels,
            seed=spec.get("seed"),
            training_type=spec.get("training_type"),
            name=job.name,
        ))
        verb = "created provider job"
    return Advance(
        State.TRAINING,
        reason=f"{verb} {remote.id}",
        fields={"provider_job_id": remote.id, "provider_status": remote.provider_status},
        cancel_remote=remote.id,
    )
