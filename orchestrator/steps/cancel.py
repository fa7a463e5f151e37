"""The cancel step: cancel the provider job, if there is one, and wait until it stops."""

from __future__ import annotations

from orchestrator.db.models import Job
from orchestrator.errors import ProviderRejected
from orchestrator.providers.base import RemoteStatus
from orchestrator.states import State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext, Wait

#: How soon to look again at a provider job that is still stopping.
CANCEL_POLL_S = 5.0


def run(job: Job, ctx: StepContext) -> Outcome:
    """Cancel remotely (unless the provider already accepted a cancel: CANCELLING); a job
    that ended first goes to finalize, which records how."""
    provider = ctx.provider
    provider_job_id = job.provider_job_id
    if provider_job_id is None:
        found = provider.find_job(job.id)
        if found is None:
            return Advance(State.CANCELLED, reason="cancelled before a provider job existed")
        provider_job_id = found.id
    fields = {"provider_job_id": provider_job_id}
    remote = provider.get_job(provider_job_id)
    if remote.status is RemoteStatus.RUNNING:
        try:
            remote = provider.cancel_job(provider_job_id)
        except ProviderRejected:
            remote = provider.get_job(provider_job_id)  # it ended between our two calls
    fields["provider_status"] = remote.provider_status
    if remote.status is RemoteStatus.CANCELLED:
        return Advance(State.CANCELLED, reason=f"provider job {provider_job_id} cancelled",
                       fields=fields)
    if remote.status.live:
        return Wait(CANCEL_POLL_S, provider_status=remote.provider_status)
    return Advance(State.FINALIZING, fields=fields,
                   reason=f"provider job had already ended ({remote.provider_status})")
