"""The validate step: check each dataset for the job's provider and model, and its cost
against ``max_cost_usd``, before anything is uploaded."""

from __future__ import annotations

from typing import Any

from orchestrator.datasets import check_budget, load_prices, validate_file
from orchestrator.datasets.pricing import OVERRIDE_NAME
from orchestrator.datasets.validate import usd
from orchestrator.db.models import Job
from orchestrator.errors import DatasetError
from orchestrator.states import State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext


def run(job: Job, ctx: StepContext) -> Outcome:
    """Validate the training (and validation) dataset; a problem fails the job via
    DatasetError naming the first errors, or the estimate and the budget."""
    hyper: dict[str, Any] = dict(job.spec.get("hyperparameters") or {})
    prices = load_prices(ctx.settings.data_dir / OVERRIDE_NAME)
    common: dict[str, Any] = dict(provider=job.provider, model=job.base_model,
                                  method=job.method, hyperparameters=hyper, prices=prices)
    train = validate_file(ctx.blobs.open_path(job.training_blob), label="training_file",
                          **common)
    if not train.ok:
        raise DatasetError(train.error_line())
    summary: dict[str, Any] = {"training": train.summary()}
    if job.validation_blob:
        val = validate_file(ctx.blobs.open_path(job.validation_blob), label="validation_file",
                            purpose="validation", **common)
        if not val.ok:
            raise DatasetError(val.error_line())
        summary["validation"] = val.summary()
    max_cost = job.spec.get("max_cost_usd")
    if max_cost is not None:
        over = check_budget(train, float(max_cost))
        if over:
            raise DatasetError(f"training_file: {over}")
    summary["estimated_cost_usd"] = train.summary()["estimated_cost_usd"]
    cost = train.cost_usd
    reason = (f"dataset valid: {train.examples} training examples, "
              f"{'unknown' if train.billed_tokens is None else f'{train.billed_tokens:,}'} "
              f"billed tokens, estimated cost "
              f"{'unknown' if cost is None else usd(cost)}")
    return Advance(State.UPLOADING, reason=reason, data=summary, fields={"dataset": summary})
