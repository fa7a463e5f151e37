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
    #: A cancel was requested; the cancel step cancels the provider job.
    CANCELLING = "cancelling"
    #: Terminal: the tuned model is ready.
    SUCCEEDED = "succeeded"
    #: Terminal: the job failed; the last transition's reason says why.
    FAILED = "failed"
    #: Terminal: cancelled on request (or at the provider).
    CANCELLED = "cancelled"


TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})

#: Every allowed move. ``training → training`` records a change of the provider's own status.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.VALIDATING, State.CANCELLED, State.FAILED}),
    State.VALIDATING: frozenset({State.UPLOADING, State.CANCELLED, State.FAILED}),
    State.UPLOADING: frozenset({State.SUBMITTING, State.CANCELLED, State.FAILED}),
    State.SUBMITTING: frozenset({State.TRAINING, State.CANCELLING, State.FAILED}),
    State.TRAINING: frozenset({State.TRAINING, State.FINALIZING, State.CANCELLING, State.FAILED}),
    State.FINALIZING: frozenset({State.SUCCEEDED, State.CANCELLED, State.FAILED}),
    # finalizing: the provider job had already ended when the cancel reached it.
    State.CANCELLING: frozenset({State.CANCELLED, State.FINALIZING, State.FAILED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
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
    State.CANCELLING: "cancel",
}

#: A worker that picks up a job in a waiting state first moves it to its working state.
STARTS: dict[State, State] = {State.QUEUED: State.VALIDATING}

#: States in which a provider job exists and may be running (and billing).
PROVIDER_JOB_LIVE: frozenset[State] = frozenset(
    {State.TRAINING, State.FINALIZING, State.CANCELLING})

#: States from which a cancel goes straight to cancelled: nothing exists at the provider yet.
CANCEL_DIRECTLY: frozenset[State] = frozenset({State.QUEUED, State.VALIDATING, State.UPLOADING})
#: States from which a cancel goes through the cancel step: a provider job may exist.
CANCEL_REMOTELY: frozenset[State] = frozenset({State.SUBMITTING, State.TRAINING})


def can_move(source: State, target: State) -> bool:
    """True if ``source → target`` is an allowed transition."""
    return target in TRANSITIONS[source]
