"""DashScope, pure translation: spec checks, request bodies, responses → normalized types,
and error bodies → ErrorInfo.

No I/O here. The status tables have one row per status DashScope documents (plus the SDK's
SUSPENDED and UNKNOWN); anything else reads as still running (jobs) or still starting
(deployments), and the adapter logs it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import httpx

from orchestrator.errors import SpecError
from orchestrator.providers.base import (
    DeploymentStatus,
    JobRequest,
    RemoteDeployment,
    RemoteJob,
    RemoteStatus,
)
from orchestrator.providers.http import ErrorInfo
from orchestrator.specs import JobSpec

BOM = b"\xef\xbb\xbf"

#: A fine-tune job's status → the engine's. QUEUING and CANCELING are named by DashScope's
#: console but seen in no API sample; SUSPENDED and UNKNOWN come from the SDK's TaskStatus.
STATUS: dict[str, RemoteStatus] = {
    "PENDING": RemoteStatus.RUNNING,
    "QUEUING": RemoteStatus.RUNNING,
    "RUNNING": RemoteStatus.RUNNING,
    "CANCELING": RemoteStatus.CANCELLING,
    "SUSPENDED": RemoteStatus.RUNNING,
    "UNKNOWN": RemoteStatus.RUNNING,
    "SUCCEEDED": RemoteStatus.SUCCEEDED,
    "FAILED": RemoteStatus.FAILED,
    "CANCELED": RemoteStatus.CANCELLED,
}

#: A deployment's status → the engine's (the SDK's DeploymentStatus; its SERVING is "RUNNING").
DEPLOYMENT_STATUS: dict[str, DeploymentStatus] = {
    "PENDING": DeploymentStatus.STARTING,
    "DEPLOYING": DeploymentStatus.STARTING,
    "RUNNING": DeploymentStatus.SERVING,
    "FAILED": DeploymentStatus.FAILED,
    "DELETING": DeploymentStatus.GONE,
}

#: ``training_type`` values tunectl can run, and the spec ``method`` (dataset shape) of each.
TRAINING_TYPES: dict[str, str] = {
    "sft": "sft", "efficient_sft": "sft", "dpo_full": "dpo", "dpo_lora": "dpo",
}
#: The training type a spec gets when it names none.
DEFAULT_TRAINING_TYPE = {"sft": "sft", "dpo": "dpo_full"}
LORA_TYPES = frozenset({"efficient_sft", "dpo_lora"})

_POSITIVE_INT = frozenset({"n_epochs", "batch_size", "max_length", "eval_steps", "logging_steps",
                           "save_total_limit", "eval_epochs", "max_split_val_dataset_sample"})
_FRACTION = frozenset({"split", "warmup_ratio"})  # 0 < x < 1 (split) / 0 <= x < 1
_LORA_INT = frozenset({"lora_rank", "lora_alpha"})
_LORA = _LORA_INT | {"lora_dropout", "target_modules"}
_OTHER = frozenset({"learning_rate", "lr_scheduler_type", "weight_decay", "max_grad_norm"})
HYPERPARAMETERS = _POSITIVE_INT | _FRACTION | _LORA | _OTHER
_SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")

#: Error codes meaning "slow down": retried whatever the HTTP status.
THROTTLING = re.compile(r"^Throttling(\..+)?$")
#: Error codes no retry can fix, whatever the HTTP status (an overdue account, content rejected).
PERMANENT_CODES = frozenset({"Arrearage", "DataInspectionFailed"})


def status_of(provider_status: str) -> RemoteStatus:
    """The normalized job status; unknown statuses count as still running."""
    return STATUS.get(provider_status, RemoteStatus.RUNNING)


def deployment_status_of(provider_status: str) -> DeploymentStatus:
    """The normalized deployment status; unknown statuses count as still starting."""
    return DEPLOYMENT_STATUS.get(provider_status, DeploymentStatus.STARTING)


def training_type(method: str, explicit: str | None) -> str:
    """The ``training_type`` a job is submitted with."""
    return explicit or DEFAULT_TRAINING_TYPE[method]


# --- Spec checks ------------------------------------------------------------------------------


def check_spec(spec: JobSpec, source: str) -> None:
    """Refuse what DashScope (or tunectl's DashScope support) cannot run, naming the field."""
    kind = spec.training_type
    if kind is not None:
        if kind == "cpt":
            raise SpecError(source, "training_type", "cpt (continued pre-training on "
                            '{"text": ...} lines) is not supported by tunectl yet; use sft, '
                            "efficient_sft, dpo_full or dpo_lora")
        if kind not in TRAINING_TYPES:
            raise SpecError(source, "training_type", f"{kind!r} is not a DashScope training "
                            f"type; use {', '.join(TRAINING_TYPES)}")
        if TRAINING_TYPES[kind] != spec.method:
            raise SpecError(source, "training_type", f"{kind} trains on "
                            f"{'preference' if TRAINING_TYPES[kind] == 'dpo' else 'chat'} data; "
                            f"set method: {TRAINING_TYPES[kind]} (the spec says {spec.method})")
    kind = training_type(spec.method, kind)
    if spec.seed is not None:
        raise SpecError(source, "seed", "DashScope fine-tunes take no seed; remove it")
    if spec.suffix is not None and not _SUFFIX.match(spec.suffix):
        raise SpecError(source, "suffix", "must be 1-32 letters, digits, '_' or '-' for "
                        "DashScope (it becomes part of the tuned model's name)")
    for key, value in spec.hyperparameters.items():
        _check_hyperparameter(key, value, kind, spec.method, source)


def _check_hyperparameter(key: str, value: Any, kind: str, method: str, source: str) -> None:
    field = f"hyperparameters.{key}"
    if key not in HYPERPARAMETERS:
        raise SpecError(source, field, f"not a DashScope hyperparameter; use "
                        f"{', '.join(sorted(HYPERPARAMETERS))}")
    if key in _LORA and kind not in LORA_TYPES:
        lora = "efficient_sft" if method == "sft" else "dpo_lora"
        raise SpecError(source, field, f"applies only to LoRA training; set training_type: "
                        f"{lora} (this job trains with {kind})")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in _POSITIVE_INT | _LORA_INT:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise SpecError(source, field, "must be a whole number of at least 1")
    elif key == "learning_rate":
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if isinstance(value, bool) or not rate > 0 or not math.isfinite(rate):
            raise SpecError(source, field, 'must be a number above 0 (or a string like "1e-5")')
    elif key in _FRACTION or key == "lora_dropout":
        above = key == "split"
        if not number or not (value > 0 if above else value >= 0) or value >= 1:
            raise SpecError(source, field, f"must be a number {'above' if above else 'from'} "
                            "0 and below 1")
    elif key in ("weight_decay", "max_grad_norm"):
        if not (number and (value > 0 if key == "max_grad_norm" else value >= 0)):
            raise SpecError(source, field, "must be a number "
                            f"{'above 0' if key == 'max_grad_norm' else 'of 0 or more'}")
    elif not isinstance(value, str) or not value:
        raise SpecError(source, field, "must be a non-empty string")


# --- Requests and responses -------------------------------------------------------------------


def job_body(request: JobRequest) -> dict[str, Any]:
    """The POST /fine-tunes body for ``request``. ``job_name`` carries the tunectl job id:
    it is how a retried submit finds the job (GET /fine-tunes lists it)."""
    body: dict[str, Any] = {
        "model": request.base_model,
        "training_file_ids": [request.training_file_id],
        "validation_file_ids": [request.validation_file_id] if request.validation_file_id
        else [],
        "hyper_parameters": dict(request.hyperparameters),
        "training_type": training_type(request.method, request.training_type),
        "job_name": request.job_id,
    }
    if request.suffix:
        body["finetuned_output_suffix"] = request.suffix
    return body


def remote_job(data: dict[str, Any]) -> RemoteJob:
    """A fine-tune job object (``output``) as a RemoteJob."""
    provider_status = str(data.get("status") or "UNKNOWN")
    status = status_of(provider_status)
    result: dict[str, Any] = {}
    for key in ("usage", "end_time", "training_type", "hyper_parameters", "job_name"):
        if data.get(key) is not None:
            result[key] = data[key]
    return RemoteJob(
        id=str(data["job_id"]),
        status=status,
        provider_status=provider_status,
        fine_tuned_model=data.get("finetuned_output") if status is RemoteStatus.SUCCEEDED
        else None,
        error=failure_reason(data) if status is RemoteStatus.FAILED else None,
        result=result,
    )


def failure_reason(data: dict[str, Any]) -> str | None:
    """``code: message`` of a failed job or deployment, if it carries them."""
    code, message = data.get("code"), data.get("message") or data.get("msg")
    if message:
        return f"{code}: {message}" if code else str(message)
    return str(code) if code else None


def remote_deployment(data: dict[str, Any]) -> RemoteDeployment:
    """A deployment object (``output``) as a RemoteDeployment."""
    provider_status = str(data.get("status") or "UNKNOWN")
    status = deployment_status_of(provider_status)
    capacity = data.get("capacity")
    return RemoteDeployment(
        id=str(data["deployed_model"]),
        model=str(data.get("model_name") or ""),
        status=status,
        provider_status=provider_status,
        capacity=capacity if isinstance(capacity, int) else 0,
        error=failure_reason(data) if status is DeploymentStatus.FAILED else None,
    )


def parse_json(content: bytes) -> Any:
    """A JSON body, with or without a UTF-8 byte order mark in front.

    Raises:
        ValueError: it is not JSON.
    """
    return json.loads(content.removeprefix(BOM).decode("utf-8"))


def describe_error(response: httpx.Response) -> ErrorInfo:
    """What a DashScope error response says, in either of the two shapes it uses:
    ``{"code", "message", "request_id"}`` or OpenAI's ``{"error": {"message", "code", …}}``."""
    request_id = response.headers.get("x-request-id")
    try:
        body = parse_json(response.content)
    except (ValueError, UnicodeDecodeError):
        return ErrorInfo(response.text[:200].strip() or response.reason_phrase, request_id)
    if not isinstance(body, dict):
        return ErrorInfo(str(body)[:200], request_id)
    error = body.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or response.reason_phrase)
        code = error.get("code") or error.get("type")
        param = error.get("param")
        if param:
            message = f"{message} (param {param})"
    else:
        message = str(body.get("message") or body.get("msg") or response.reason_phrase)
        code = body.get("code")
        request_id = str(body.get("request_id") or "") or request_id
    code = str(code) if code else None
    if code:
        message = f"{code}: {message}"
    return ErrorInfo(message, request_id, code, permanent=code in PERMANENT_CODES,
                     throttled=bool(code and THROTTLING.match(code)))
