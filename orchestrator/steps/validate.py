"""The validate step: check each dataset for the job's provider and model, and its cost
against ``max_cost_usd``, before anything is uploaded.

For a provider that converts datasets (``converts_datasets``), a dataset written in another
provider's format is converted first (every line must convert) and the converted copy is
what the job validates and uploads from then on.
"""

from __future__ import annotations

from typing import Any

from orchestrator.datasets import check_budget, load_prices, validate_file
from orchestrator.datasets.convert import convert_file, file_format
from orchestrator.datasets.formats import expected_format, same_shape
from orchestrator.datasets.pricing import OVERRIDE_NAME
from orchestrator.datasets.validate import usd
from orchestrator.db.models import Job
from orchestrator.errors import DatasetError
from orchestrator.providers.base import converts_datasets
from orchestrator.states import State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext


def run(job: Job, ctx: StepContext) -> Outcome:
    """Validate the training (and validation) dataset; a problem fails the job via
    DatasetError naming the first errors, or the estimate and the budget."""
    hyper: dict[str, Any] = dict(job.spec.get("hyperparameters") or {})
    prices = load_prices(ctx.settings.data_dir / OVERRIDE_NAME)
    common: dict[str, Any] = dict(provider=job.provider, model=job.base_model,
                                  method=job.method, hyperparameters=hyper, prices=prices)
    fields: dict[str, Any] = {}
    training, converted = _in_provider_format(job, ctx, job.training_blob, "training_file")
    train = validate_file(ctx.blobs.open_path(training), label="training_file", **common)
    if not train.ok:
        raise DatasetError(train.error_line())
    summary: dict[str, Any] = {"training": {**train.summary(), **converted}}
    if converted:
        fields["training_blob"] = training
    if job.validation_blob:
        validation, converted = _in_provider_format(job, ctx, job.validation_blob,
                                                    "validation_file")
        val = validate_file(ctx.blobs.open_path(validation), label="validation_file",
                            purpose="validation", **common)
        if not val.ok:
            raise DatasetError(val.error_line())
        summary["validation"] = {**val.summary(), **converted}
        if converted:
            fields["validation_blob"] = validation
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
    for name, part in summary.items():
        if isinstance(part, dict) and "converted_from" in part:
            reason += f"; {name} converted from {part['converted_from']} to {part['format']}"
    return Advance(State.UPLOADING, reason=reason, data=summary,
                   fields={"dataset": summary, **fields})


def _in_provider_format(job: Job, ctx: StepContext, blob: str,
                        label: str) -> tuple[str, dict[str, Any]]:
    """The blob of the dataset in the provider's format, converting it if the provider asks
    for that and it is another provider's format of the same method; and what was done."""
    path = ctx.blobs.open_path(blob)
    found = file_format(path) if converts_datasets(ctx.plugin) else None
    wanted = expected_format(job.provider, job.method)
    if found is None or found.method != wanted.method or same_shape(wanted, found):
        return blob, {}  # nothing to convert: validation says what does not fit
    converted, report = ctx.blobs.put_written(
        lambda out: convert_file(path, job.provider, out))
    if report.log.error_count:
        raise DatasetError(f"{label} is in {found.value} format and {report.skipped} of its "
                           f"{report.lines} lines cannot be converted to {wanted.value}: "
                           f"{report.log.error_line(label)}")
    return converted, {"converted_from": found.value, "source_blob": blob,
                       "conversion_warnings": report.log.warning_count}
