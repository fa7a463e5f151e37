"""OpenAI, pure translation: spec checks, request bodies, responses → normalized types.

No I/O here. The status table has one row per status OpenAI documents (plus ``paused``,
which the API returns but the spec's enum omits); anything else reads as still running.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import httpx

from orchestrator.errors import SpecError
from orchestrator.providers.base import JobRequest, RemoteEvent, RemoteJob, RemoteStatus
from orchestrator.providers.http import ErrorInfo
from orchestrator.specs import JobSpec

#: The metadata key that ties an OpenAI job to its tunectl job (how a retried submit finds it).
JOB_ID_KEY = "tunectl_job_id"
MAX_LABELS = 15  # OpenAI allows 16 metadata pairs; one carries the job id

STATUS: dict[str, RemoteStatus] = {
    "validating_files": RemoteStatus.RUNNING,
    "queued": RemoteStatus.RUNNING,
    "running": RemoteStatus.RUNNING,
    "paused": RemoteStatus.RUNNING,
    "succeeded": RemoteStatus.SUCCEEDED,
    "failed": RemoteStatus.FAILED,
    "cancelled": RemoteStatus.CANCELLED,
}

#: Error codes that no retry can fix, whatever the HTTP status (429 insufficient_quota).
PERMANENT_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
_METHOD = {"sft": "supervised", "dpo": "dpo"}
_INT_RANGES = {"n_epochs": (1, 50), "batch_size": (1, 256)}


def status_of(provider_status: str) -> RemoteStatus:
    """The normalized status; unknown statuses count as still running."""
    return STATUS.get(provider_status, RemoteStatus.RUNNING)


def check_spec(spec: JobSpec, source: str) -> None:
    """Refuse what OpenAI cannot run, naming the field."""
    if spec.deploy is not None:
        raise SpecError(source, "deploy", "OpenAI serves tuned models without a deployment; "
                        "remove the deploy block")
    if spec.training_type is not None:
        raise SpecError(source, "training_type", "OpenAI has no training types; choose "
                        "method: sft or dpo and remove training_type")
    if len(spec.labels) > MAX_LABELS:
        raise SpecError(source, "labels", f"OpenAI keeps at most {MAX_LABELS} labels "
                        f"(as job metadata); this spec has {len(spec.labels)}")
    allowed = {"n_epochs", "batch_size", "learning_rate_multiplier"}
    if spec.method == "dpo":
        allowed.add("beta")
    for key, value in spec.hyperparameters.items():
        field = f"hyperparameters.{key}"
        if key not in allowed:
            raise SpecError(source, field, f"not an OpenAI {spec.method} hyperparameter; "
                            f"use {', '.join(sorted(allowed))}")
        if value == "auto":
            continue
        if key in _INT_RANGES:
            low, high = _INT_RANGES[key]
            if not (isinstance(value, int) and not isinstance(value, bool)
                    and low <= value <= high):
                raise SpecError(source, field, f'must be an integer from {low} to {high} or "auto"')
        elif not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise SpecError(source, field, 'must be a number above 0 or "auto"')
        elif key == "beta" and value > 2:
            raise SpecError(source, field, 'must be above 0 and at most 2, or "auto"')


def job_body(request: JobRequest) -> dict[str, Any]:
    """The POST /fine_tuning/jobs body for ``request``."""
    method = _METHOD[request.method]
    body: dict[str, Any] = {
        "model": request.base_model,
        "training_file": request.training_file_id,
        "metadata": {**request.labels, JOB_ID_KEY: request.job_id},
        "method": {"type": method, method: {"hyperparameters": dict(request.hyperparameters)}},
    }
    if request.validation_file_id:
        body["validation_file"] = request.validation_file_id
    if request.suffix:
        body["suffix"] = request.suffix
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def remote_job(data: dict[str, Any]) -> RemoteJob:
    """A FineTuningJob object as a RemoteJob."""
    provider_status = str(data.get("status") or "unknown")
    status = status_of(provider_status)
    result: dict[str, Any] = {}
    for key in ("trained_tokens", "result_files", "finished_at", "estimated_finish"):
        if data.get(key) is not None:
            result[key] = data[key]
    method = data.get("method") or {}
    hyper = (method.get(method.get("type") or "", {}) or {}).get("hyperparameters")
    if hyper:
        result["hyperparameters"] = hyper
    return RemoteJob(
        id=str(data["id"]),
        status=status,
        provider_status=provider_status,
        fine_tuned_model=data.get("fine_tuned_model"),
        error=_job_error(data.get("error")) if status is RemoteStatus.FAILED else None,
        result=result,
    )


def _job_error(error: Any) -> str:
    # The API returns either null or an object whose fields may all be null.
    if not isinstance(error, dict) or not any(error.values()):
        return "OpenAI reported the job failed without a reason"
    code, message, param = error.get("code"), error.get("message"), error.get("param")
    text = f"{code}: {message}" if code else str(message)
    return f"{text} (param {param})" if param else text


def event(data: dict[str, Any]) -> RemoteEvent:
    """A FineTuningJobEvent as a RemoteEvent."""
    created = data.get("created_at")
    at = datetime.fromtimestamp(created if isinstance(created, int | float)
                                and math.isfinite(created) else 0, UTC)
    return RemoteEvent(at=at, level=str(data.get("level", "info")),
                       message=str(data.get("message", "")))


def describe_error(response: httpx.Response) -> ErrorInfo:
    """What an OpenAI error response says, whatever its body."""
    request_id = response.headers.get("x-request-id")
    try:
        error = response.json().get("error") or {}
        message = str(error.get("message") or response.reason_phrase)
        code = error.get("code")
    except (ValueError, AttributeError):
        return ErrorInfo(response.text[:200] or response.reason_phrase, request_id)
    if code:
        message = f"{message} ({code})"
    return ErrorInfo(message, request_id, code, permanent=code in PERMANENT_CODES)
