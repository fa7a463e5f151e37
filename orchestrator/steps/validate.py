"""The validate step: check each dataset before anything is uploaded."""

from __future__ import annotations

from orchestrator.datasets.basic import check_jsonl
from orchestrator.db.models import Job
from orchestrator.states import State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext


def run(job: Job, ctx: StepContext) -> Outcome:
    """Check the training (and validation) dataset; a problem fails the job via DatasetError."""
    train = check_jsonl(ctx.blobs.open_path(job.training_blob), method=job.method,
                        min_examples=ctx.plugin.min_examples, label="training_file")
    data = {"training_examples": train.examples, "training_bytes": train.bytes}
    if job.validation_blob:
        val = check_jsonl(ctx.blobs.open_path(job.validation_blob), method=job.method,
                          min_examples=1, label="validation_file")
        data.update(validation_examples=val.examples, validation_bytes=val.bytes)
    return Advance(State.UPLOADING, reason=f"dataset valid: {train.examples} training examples",
                   data=data)
