"""The job lifecycle as data: states, allowed transitions, and the step that works each state.

Pure data, no I/O. ``db/transition.py`` is the only code that moves a job between states,
and it refuses any move that is not listed here. docs/state-machine.md draws this table
(a unit test keeps the two in step).
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a job is. Each comment says what moves a job out of the state."""

    #: Accepted and stored; the scheduler hands it to the validate step.
    QUEUED = "queued"
    #: The validate step is checking the dataset; it moves on to uploading or failed.
    VALIDATING = "validating"
    #: The upload step puts the dataset at the provider (once per content hash).
    UPLOADING = "uploading"
    #: The submit step creates the provider job (or finds the one it already created).
    SUBMITTING = "submitting"
    #: The provider is training; the poll step re-arms itself until the provider ends.
    TRAINING = "training"
    #: The provider job ended; the finalize step collects the outcome and results.
    FINALIZING = "finalizing"
    #: The tuned model is being deployed (providers that serve tuned models only once
    #: deployed): the deploy step creates the deployment once and polls it until it serves.
    DEPLOYING = "deploying"
    #: A cancel was requested; the cancel step cancels the provider job.
    CANCELLING = "cancelling"
    #: Terminal: the tuned model is ready (and deployed, if the spec asked). Left only by a
    #: deployment: `tunectl deploy` (→ deploying) or a deployment deleted (→ succeeded).
    SUCCEEDED = "succeeded"
    #: Terminal: the job failed; the last transition's reason says why. A job whose tuned
    #: model exists can still be deployed with `tunectl deploy` (→ deploying).
    FAILED = "failed"
    #: Terminal: cancelled on request (or at the provider).
    CANCELLED = "cancelled"


TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})


class FailureKind(StrEnum):
    """Why a failed job failed, as a stable class dashboards group on (``jobs.failure_kind``;
    ``jobs.error`` keeps the full, job-specific reason). Each comment says who sets it."""

    #: The validate step refused a dataset, or its estimated cost is over max_cost_usd.
    DATASET = "dataset"
    #: A step found the spec unrunnable (its provider's plugin is gone, a field refused).
    SPEC = "spec"
    #: No key is configured for the job's provider on the worker that ran the step.
    MISSING_CREDENTIAL = "missing_credential"
    #: The provider refused tunectl's key (401/403).
    PROVIDER_AUTH = "provider_auth"
    #: The provider refused a request as invalid (400/404/422, quota exhausted …).
    PROVIDER_REJECTED = "provider_rejected"
    #: The provider ran the job and failed it (finalize).
    PROVIDER_FAILED_JOB = "provider_failed_job"
    #: One step kept failing without progress: the scheduler gave up (max_attempts).
    GAVE_UP = "gave_up"
    #: The deployment failed, vanished, or did not serve in time (the deploy step).
    DEPLOYMENT_FAILED = "deployment_failed"
    #: Failed before tunectl recorded failure kinds (set by migration 0006).
    UNCLASSIFIED = "unclassified"

#: Every allowed move. ``training → training`` and ``deploying → deploying`` record a change of
#: the provider's own status; ``succeeded → succeeded`` and ``failed → failed`` record a
#: deployment of the job's tuned model being deleted (TTL, `tunectl undeploy`).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.VALIDATING, State.CANCELLED, State.FAILED}),
    State.VALIDATING: frozenset({State.UPLOADING, State.CANCELLED, State.FAILED}),
    State.UPLOADING: frozenset({State.SUBMITTING, State.CANCELLED, State.FAILED}),
    State.SUBMITTING: frozenset({State.TRAINING, State.CANCELLING, State.FAILED}),
    State.TRAINING: frozenset({State.TRAINING, State.FINALIZING, State.CANCELLING, State.FAILED}),
    State.FINALIZING: frozenset({State.SUCCEEDED, State.DEPLOYING, State.CANCELLED,
                                 State.FAILED}),
    State.DEPLOYING: frozenset({State.DEPLOYING, State.SUCCEEDED, State.FAILED}),
    # finalizing: the provider job had already ended when the cancel reached it.
    State.CANCELLING: frozenset({State.CANCELLED, State.FINALIZING, State.FAILED}),
    # Only `tunectl deploy` leaves a terminal state; no step works one.
    State.SUCCEEDED: frozenset({State.SUCCEEDED, State.DEPLOYING}),
    State.FAILED: frozenset({State.FAILED, State.DEPLOYING}),
    State.CANCELLED: frozenset(),
}

#: The step that works a job in each non-terminal state (the Celery task ``tunectl.step.<name>``).
STEP_FOR_STATE: dict[State, str] = {
    State.QUEUED: "validate",
    State.VALIDATING: "validate",
    State.UPLOADING: "upload",
    State.SUBMITTING: "submit",
    State.TRAINING: "poll",
    State.FINALIZING: "finalize",
    State.DEPLOYING: "deploy",
    State.CANCELLING: "cancel",
}

#: A worker that picks up a job in a waiting state first moves it to its working state.
STARTS: dict[State, State] = {State.QUEUED: State.VALIDATING}

#: States in which a provider job exists and may be running (and billing).
PROVIDER_JOB_LIVE: frozenset[State] = frozenset(
    {State.TRAINING, State.FINALIZING, State.CANCELLING})

#: States in which something at the provider may be running and billing (a job or a
#: deployment): a credential error there is retried, not failed, so tunectl keeps watching.
PROVIDER_RESOURCE_LIVE: frozenset[State] = PROVIDER_JOB_LIVE | {State.DEPLOYING}

#: States from which a cancel goes straight to cancelled: nothing exists at the provider yet.
CANCEL_DIRECTLY: frozenset[State] = frozenset({State.QUEUED, State.VALIDATING, State.UPLOADING})
#: States from which a cancel goes through the cancel step: a provider job may exist.
CANCEL_REMOTELY: frozenset[State] = frozenset({State.SUBMITTING, State.TRAINING})


def can_move(source: State, target: State) -> bool:
    """True if ``source → target`` is an allowed transition."""
    return target in TRANSITIONS[source]


class DeploymentState(StrEnum):
    """Where a deployment of a tuned model is. Each comment says what moves it on."""

    #: Recorded before the provider is asked: the deploy step creates it (or finds the one
    #: an earlier attempt created) and moves it on.
    CREATING = "creating"
    #: The provider has it and is starting it; the deploy step polls it.
    DEPLOYING = "deploying"
    #: Serving (and billing). The scheduler deletes it when its TTL expires.
    RUNNING = "running"
    #: To be deleted (TTL expired, `tunectl undeploy`, or its job no longer wants it): the
    #: undeploy step deletes it at the provider.
    DELETING = "deleting"
    #: Terminal: deleted at the provider.
    DELETED = "deleted"
    #: Terminal: it never served (the provider failed it, it did not start in time, or the
    #: provider refused to create it); whatever existed at the provider was deleted.
    FAILED = "failed"


#: Deployment states that may exist (and bill) at the provider.
DEPLOYMENT_LIVE: frozenset[DeploymentState] = frozenset({
    DeploymentState.CREATING, DeploymentState.DEPLOYING, DeploymentState.RUNNING,
    DeploymentState.DELETING})

#: Every allowed move of a deployment. ``deploying → deploying`` records a change of the
#: provider's status; ``running → running`` a change of capacity.
DEPLOYMENT_TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    DeploymentState.CREATING: frozenset({DeploymentState.DEPLOYING, DeploymentState.RUNNING,
                                         DeploymentState.FAILED, DeploymentState.DELETING}),
    DeploymentState.DEPLOYING: frozenset({DeploymentState.DEPLOYING, DeploymentState.RUNNING,
                                          DeploymentState.FAILED, DeploymentState.DELETING}),
    DeploymentState.RUNNING: frozenset({DeploymentState.RUNNING, DeploymentState.DELETING}),
    DeploymentState.DELETING: frozenset({DeploymentState.DELETED}),
    DeploymentState.DELETED: frozenset(),
    DeploymentState.FAILED: frozenset(),
}
