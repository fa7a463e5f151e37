"""The poll step: one look at the provider job, then either wait or hand over to finalize."""

from __future__ import annotations

from orchestrator.db.models import Job
from orchestrator.states import State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext, Wait


def run(job: Job, ctx: StepContext) -> Outcome:
    """Ask the provider once; never sleeps."""
    assert job.provider_job_id is not None, "poll runs only after submit"
    remote = ctx.provider.get_job(job.provider_job_id)
    if remote.status.live:
        return Wait(ctx.settings.poll_interval_s, provider_status=remote.provider_status)
    return Advance(State.FINALIZING, reason=f"provider job ended: {remote.provider_status}",
                   fields={"provider_status": remote.provider_status})
