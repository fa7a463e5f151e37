"""The finalize step: record how the provider job ended and what it produced."""

from __future__ import annotations

from typing import Any

from orchestrator.db.models import Job
from orchestrator.providers.base import RemoteStatus, deploys
from orchestrator.states import FailureKind, State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext, Wait


def run(job: Job, ctx: StepContext) -> Outcome:
    """Map the provider's final status to succeeded, failed or cancelled."""
    assert job.provider_job_id is not None, "finalize runs only after submit"
    remote = ctx.provider.get_job(job.provider_job_id)
    fields: dict[str, Any] = {"provider_status": remote.provider_status}
    if remote.status is RemoteStatus.SUCCEEDED:
        model_ref = dict(remote.model_ref or {"provider": job.provider,
                                              "model": remote.fine_tuned_model})
        result = {**remote.result, "model_ref": model_ref}
        fields.update(fine_tuned_model=remote.fine_tuned_model, result=result)
        if job.spec.get("deploy") and deploys(ctx.plugin):
            return Advance(State.DEPLOYING, fields=fields, reason=f"tuned model "
                           f"{remote.fine_tuned_model} is ready; deploying it")
        return Advance(State.SUCCEEDED, reason=f"tuned model {remote.fine_tuned_model} is ready",
                       fields=fields)
    if remote.status is RemoteStatus.FAILED:
        reason = f"provider failed the job: {remote.error}"
        return Advance(State.FAILED, reason=reason, fields={
            **fields, "error": reason, "failure_kind": FailureKind.PROVIDER_FAILED_JOB.value})
    if remote.status is RemoteStatus.CANCELLED:
        return Advance(State.CANCELLED, reason="provider job cancelled", fields=fields)
    # The provider reopened the job (resumed after a pause, say): look again later.
    return Wait(ctx.settings.poll_interval_s, provider_status=remote.provider_status)
