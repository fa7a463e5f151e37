"""Vertex AI, pure translation: spec checks, resource names, request bodies, TuningJob JSON →
RemoteJob (with the tuned model's ``model_ref``), and Google error bodies → ErrorInfo.

No I/O here. ``STATUS`` has one row per ``JobState`` of the v1 API (job_state.proto); an
unknown state reads as still running and the adapter logs it. Vertex speaks proto3 JSON:
int64 fields (``epochCount``, example counts) are strings, and are sent as strings.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.errors import SpecError
from orchestrator.providers.base import JobRequest, RemoteEvent, RemoteJob, RemoteStatus
from orchestrator.providers.http import ErrorInfo
from orchestrator.specs import JobSpec

PROVIDER = "vertex"
#: The OAuth scope every Vertex and Cloud Storage call needs.
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: The label that ties a tuning job to its tunectl job (how a retried submit finds it).
JOB_ID_LABEL = "tunectl_job_id"
#: Cloud Storage custom metadata naming the content hash of an uploaded dataset.
SHA256_METADATA = "tunectl-sha256"

#: A JobState → the engine's. Terminal states other than SUCCEEDED and CANCELLED fail the
#: job: EXPIRED never ran to the end, and PARTIALLY_SUCCEEDED "may miss results", which for
#: a tuned model means it cannot be trusted. PAUSED and UPDATING jobs can still go on;
#: a CANCELLING one has accepted its cancel (asking again is refused).
STATUS: dict[str, RemoteStatus] = {
    "JOB_STATE_UNSPECIFIED": RemoteStatus.RUNNING,
    "JOB_STATE_QUEUED": RemoteStatus.RUNNING,
    "JOB_STATE_PENDING": RemoteStatus.RUNNING,
    "JOB_STATE_RUNNING": RemoteStatus.RUNNING,
    "JOB_STATE_CANCELLING": RemoteStatus.CANCELLING,
    "JOB_STATE_PAUSED": RemoteStatus.RUNNING,
    "JOB_STATE_UPDATING": RemoteStatus.RUNNING,
    "JOB_STATE_SUCCEEDED": RemoteStatus.SUCCEEDED,
    "JOB_STATE_FAILED": RemoteStatus.FAILED,
    "JOB_STATE_EXPIRED": RemoteStatus.FAILED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": RemoteStatus.FAILED,
    "JOB_STATE_CANCELLED": RemoteStatus.CANCELLED,
}

#: Base models Vertex tunes (Google's supervised-tuning pages; 2.5 models also by a
#: version suffix such as -001). The emulator tunes exactly these.
BASE_MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
               "gemini-2.0-flash-001", "gemini-2.0-flash-lite-001")
_BASE_MODEL = re.compile(r"gemini-2\.5-(?:pro|flash|flash-lite)(?:-\d{3})?"
                         r"|gemini-2\.0-flash(?:-lite)?-001")
#: How long after a job SUCCEEDED Vertex may take to name the tuned model's endpoint
#: before the job fails for want of one (it is what clients call).
ENDPOINT_WAIT_S = 3600.0
#: SupervisedHyperParameters.AdapterSize by size.
ADAPTER_SIZES = {1: "ADAPTER_SIZE_ONE", 2: "ADAPTER_SIZE_TWO", 4: "ADAPTER_SIZE_FOUR",
                 8: "ADAPTER_SIZE_EIGHT", 16: "ADAPTER_SIZE_SIXTEEN",
                 32: "ADAPTER_SIZE_THIRTY_TWO"}
#: The spec's common names for Vertex's hyperparameters.
ALIASES = {"n_epochs": "epoch_count"}
HYPERPARAMETERS = frozenset({"epoch_count", "learning_rate_multiplier", "adapter_size"})
#: provider_options keys.
OPTIONS = frozenset({"project", "location", "bucket", "prefix"})

# Every pattern is matched whole (fullmatch: no trailing newline slips through).
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_PROJECT_TEXT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20}"
#: global, the multi-regions us and eu, or a region such as us-central1: it becomes part of
#: a host name, so nothing else gets through, wherever it comes from.
_LOCATION_TEXT = r"global|us|eu|[a-z]+(?:-[a-z]+)+[0-9]+"
_PROJECT = re.compile(_PROJECT_TEXT)
_LOCATION = re.compile(_LOCATION_TEXT)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9_.=-]+(?:/[A-Za-z0-9_.=-]+)*/?")
_ENDPOINT = re.compile(rf"projects/({_PROJECT_TEXT})/locations/({_LOCATION_TEXT})"
                       r"/endpoints/([0-9]{1,20})")
_JOB_NAME = re.compile(rf"projects/(?:{_PROJECT_TEXT})/locations/({_LOCATION_TEXT})"
                       r"/tuningJobs/[0-9]{1,20}")
MAX_FILE_ID = 200  # provider_files.file_id and jobs.training_file_id


def status_of(state: str) -> RemoteStatus:
    """The normalized status; unknown states count as still running."""
    return STATUS.get(state, RemoteStatus.RUNNING)


# --- Spec checks ------------------------------------------------------------------------------


def tunable(model: str) -> bool:
    """Whether Vertex tunes ``model`` (one of BASE_MODELS)."""
    return _BASE_MODEL.fullmatch(model) is not None


def check_spec(spec: JobSpec, source: str) -> None:
    """Refuse what Vertex (or tunectl's Vertex support) cannot run, naming the field."""
    if not tunable(spec.base_model):
        raise SpecError(source, "base_model", f"{spec.base_model!r} is not a Gemini model "
                        f"Vertex tunes; use one of {', '.join(BASE_MODELS)}")
    if spec.method != "sft":
        raise SpecError(source, "method", "tunectl runs Vertex supervised tuning only; set "
                        "method: sft (Vertex preference tuning is not supported yet)")
    if spec.training_type is not None:
        raise SpecError(source, "training_type", "Vertex has no training types; remove it "
                        "(adapter_size in hyperparameters sets the LoRA size)")
    if spec.seed is not None:
        raise SpecError(source, "seed", "Vertex tuning takes no seed; remove it")
    if spec.suffix is not None and len(spec.suffix) > 64:
        raise SpecError(source, "suffix", "must be at most 64 characters")
    check_options(spec.provider_options, source)
    _check_labels(spec.labels, source)
    for key, value in spec.hyperparameters.items():
        _check_hyperparameter(key, value, spec.hyperparameters, source)


def check_options(options: Mapping[str, str], source: str) -> None:
    """Refuse a project, location, bucket or prefix Vertex would not take (the location
    becomes part of a host name); an empty prefix means none."""
    checks = {"project": (_PROJECT, "a project id (6-30 lower-case letters, digits or '-') "
                                    "or a project number"),
              "location": (_LOCATION, "a Vertex location such as us-central1, europe-west4 "
                                      "or global"),
              "bucket": (_BUCKET, "a Cloud Storage bucket name (3-63 lower-case letters, "
                                  "digits, '-', '_' or '.'), without gs://"),
              "prefix": (_PREFIX, "an object prefix such as tunectl/datasets/ (letters, "
                                  "digits, '_', '.', '=', '-', separated by '/')")}
    for key, value in options.items():
        pattern, what = checks[key]
        if key == "prefix" and value == "":
            continue
        if not pattern.fullmatch(value) or (key == "prefix" and ".." in value.split("/")):
            raise SpecError(source, f"provider_options.{key}", f"must be {what}")
    uri = dataset_uri(options.get("bucket", "b" * 63), options.get("prefix", ""), "0" * 64)
    if len(uri) > MAX_FILE_ID:
        raise SpecError(source, "provider_options.prefix", "is too long: a dataset's gs:// "
                        f"URI must stay within {MAX_FILE_ID} characters")


def _check_labels(labels: dict[str, str], source: str) -> None:
    for key, value in labels.items():
        if key == JOB_ID_LABEL:
            raise SpecError(source, f"labels.{key}", "is tunectl's own label; rename it")
        if not _LABEL_KEY.fullmatch(key):
            raise SpecError(source, f"labels.{key}", "a Vertex label key must start with a "
                            "lower-case letter and hold only lower-case letters, digits, '_' "
                            "and '-' (at most 63)")
        if not _LABEL_VALUE.fullmatch(value):
            raise SpecError(source, f"labels.{key}", "a Vertex label value may hold only "
                            "lower-case letters, digits, '_' and '-' (at most 63)")


def _check_hyperparameter(key: str, value: Any, given: dict[str, Any], source: str) -> None:
    field = f"hyperparameters.{key}"
    name = ALIASES.get(key, key)
    if name not in HYPERPARAMETERS:
        raise SpecError(source, field, "not a Vertex hyperparameter; use "
                        f"{', '.join(sorted(HYPERPARAMETERS))} (n_epochs means epoch_count)")
    if name != key and name in given:
        raise SpecError(source, field, f"is the same as {name}; keep one of them")
    whole = isinstance(value, int) and not isinstance(value, bool)
    if name == "epoch_count" and not (whole and value >= 1):
        raise SpecError(source, field, "must be a whole number of at least 1")
    if name == "learning_rate_multiplier" and not (
            isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise SpecError(source, field, "must be a number above 0")
    if name == "adapter_size" and value not in ADAPTER_SIZES and value not in \
            ADAPTER_SIZES.values():
        raise SpecError(source, field, "must be 1, 2, 4, 8, 16 or 32 (or "
                        "ADAPTER_SIZE_FOUR and the like)")


# --- Names and URLs ---------------------------------------------------------------------------


def base_url(location: str) -> str:
    """Google's Vertex AI endpoint for ``location``.

    Raises:
        ValueError: ``location`` is not a Vertex location (it would name another host).
    """
    if not _LOCATION.fullmatch(location):
        raise ValueError(f"not a Vertex location: {location!r}")
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def parent(project: str, location: str) -> str:
    """The Location resource tuning jobs live under."""
    return f"projects/{project}/locations/{location}"


def object_name(prefix: str, sha256: str) -> str:
    """The Cloud Storage object of a dataset: named by its content hash, so a retried
    upload finds it."""
    name = f"tunectl-{sha256}.jsonl"
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def dataset_uri(bucket: str, prefix: str, sha256: str) -> str:
    """The ``gs://`` URI a tuning job reads the dataset from."""
    return f"gs://{bucket}/{object_name(prefix, sha256)}"


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, object) of a ``gs://bucket/object`` URI.

    Raises:
        ValueError: it is not one.
    """
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not bucket or not name:
        raise ValueError(f"not a gs://bucket/object URI: {uri!r}")
    return bucket, name


def object_path(bucket: str, name: str) -> str:
    """The JSON API path of an object (its name is one path segment, '/' included)."""
    return f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


def job_location(name: str) -> str:
    """The location of a tuning job resource name (where it must be asked about).

    Raises:
        ValueError: ``name`` is not ``projects/…/locations/…/tuningJobs/…``.
    """
    match = _JOB_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not a tuning job name: {name!r}")
    return match.group(1)


def endpoint_location(endpoint: str) -> str:
    """The location of an endpoint resource name.

    Raises:
        ValueError: it is not ``projects/…/locations/…/endpoints/…``.
    """
    match = _ENDPOINT.fullmatch(endpoint)
    if match is None:
        raise ValueError(f"not an endpoint name: {endpoint!r}")
    return match.group(2)


def label_value(text: str) -> str:
    """``text`` as a Google label value (lower-case; Crockford job ids lose nothing)."""
    return text.lower()[:63]


def job_filter(job_id: str) -> str:
    """The list filter that finds the tuning job of tunectl job ``job_id``."""
    return f'labels.{JOB_ID_LABEL}="{label_value(job_id)}"'


# --- Requests and responses -------------------------------------------------------------------


def job_body(request: JobRequest, training_uri: str, validation_uri: str | None) -> dict[str, Any]:
    """The TuningJob to create for ``request``; int64 fields as strings (proto3 JSON)."""
    hyper: dict[str, Any] = {}
    for key, value in request.hyperparameters.items():
        name = ALIASES.get(key, key)
        if name == "epoch_count":
            hyper["epochCount"] = str(value)
        elif name == "learning_rate_multiplier":
            hyper["learningRateMultiplier"] = float(value)
        elif name == "adapter_size":
            hyper["adapterSize"] = ADAPTER_SIZES.get(value, value)
    spec: dict[str, Any] = {"trainingDatasetUri": training_uri}
    if validation_uri:
        spec["validationDatasetUri"] = validation_uri
    if hyper:
        spec["hyperParameters"] = hyper
    display = request.suffix or request.name or f"tunectl-{request.job_id}"
    return {
        "baseModel": request.base_model,
        "supervisedTuningSpec": spec,
        "tunedModelDisplayName": display[:128],
        "description": f"tunectl job {request.job_id}",
        "labels": {**request.labels, JOB_ID_LABEL: label_value(request.job_id)},
    }


def is_job_of(data: dict[str, Any], job_id: str) -> bool:
    """Whether a TuningJob carries tunectl job ``job_id``'s label."""
    labels = data.get("labels")
    return isinstance(labels, dict) and labels.get(JOB_ID_LABEL) == label_value(job_id)


def remote_job(data: dict[str, Any], now: datetime) -> RemoteJob:
    """A TuningJob as a RemoteJob at ``now``; a succeeded one carries its model_ref."""
    state = str(data.get("state") or "JOB_STATE_UNSPECIFIED")
    status = status_of(state)
    tuned = _dict(data.get("tunedModel"))
    endpoint, model = str(tuned.get("endpoint") or ""), tuned.get("model")
    error = failure_reason(data, state) if status is RemoteStatus.FAILED else None
    if status is RemoteStatus.SUCCEEDED and not _ENDPOINT.fullmatch(endpoint):
        # The endpoint is what clients call: until Vertex names it, the job is not done,
        # and a job that names none for ENDPOINT_WAIT_S after it ended never will.
        ended = _time(data.get("endTime")) or _time(data.get("updateTime"))
        if ended is not None and (now - ended).total_seconds() <= ENDPOINT_WAIT_S:
            status = RemoteStatus.RUNNING
        else:
            status = RemoteStatus.FAILED
            error = (f"Vertex reported the tuning job succeeded but named no endpoint for "
                     f"the tuned model within {ENDPOINT_WAIT_S / 60:g} minutes (tunedModel."
                     f"endpoint: {endpoint[:100]!r})")
    result: dict[str, Any] = {}
    for key in ("createTime", "startTime", "endTime", "experiment"):
        if data.get(key):
            result[key] = data[key]
    stats = _dict(_dict(data.get("tuningDataStats")).get("supervisedTuningDataStats"))
    for key in ("tuningDatasetExampleCount", "totalBillableTokenCount", "tuningStepCount"):
        if stats.get(key) is not None:
            result[key] = _int64(stats[key])
    model_ref = None
    if status is RemoteStatus.SUCCEEDED:
        result.update(tuned_model=model, endpoint=endpoint)
        model_ref = model_ref_of(endpoint, str(data.get("baseModel") or ""))
    return RemoteJob(
        id=str(data["name"]),
        status=status,
        provider_status=state,
        fine_tuned_model=model if status is RemoteStatus.SUCCEEDED else None,
        error=error,
        result=result,
        model_ref=model_ref,
    )


def model_ref_of(endpoint: str, base_model: str) -> dict[str, Any]:
    """What LiteLLM needs to call a tuned Gemini endpoint: ``completion(messages=…,
    **{k: ref[k] for k in ("model", "base_model", "vertex_project", "vertex_location")})``.

    The project and location come from the endpoint's own name: a wrong region gives a 404.
    """
    match = _ENDPOINT.fullmatch(endpoint)
    if match is None:
        raise ValueError(f"not an endpoint name: {endpoint!r}")
    project, location, endpoint_id = match.groups()
    return {"provider": PROVIDER, "model": f"vertex_ai/gemini/{endpoint_id}",
            "base_model": f"vertex_ai/{base_model}", "vertex_project": project,
            "vertex_location": location, "endpoint": endpoint}


def failure_reason(data: dict[str, Any], state: str) -> str:
    """Why a job failed, as one line (``google.rpc.Status`` code name and message)."""
    error = _dict(data.get("error"))
    message = str(error.get("message") or "").strip()
    number = error.get("code")
    code = RPC_CODES.get(number, "") if isinstance(number, int) else ""
    what = {"JOB_STATE_EXPIRED": "the tuning job expired",
            "JOB_STATE_PARTIALLY_SUCCEEDED": "the tuning job only partially succeeded",
            }.get(state, "")
    detail = f"{code}: {message}" if code and message else message or code
    if what:
        return f"{what} ({detail})" if detail else what
    return detail or "Vertex reported the tuning job failed without a reason"


def events(data: dict[str, Any]) -> list[RemoteEvent]:
    """A tuning job's milestones as events (Vertex has no event log for tuning jobs)."""
    found: list[RemoteEvent] = []
    for key, level, message in (("createTime", "info", "tuning job created"),
                                ("startTime", "info", "tuning started"),
                                ("endTime", "info", f"ended {data.get('state')}")):
        at = _time(data.get(key))
        if at is not None:
            found.append(RemoteEvent(at=at, level=level, message=message))
    if found and status_of(str(data.get("state"))) is RemoteStatus.FAILED:
        reason = failure_reason(data, str(data.get("state")))
        found[-1] = RemoteEvent(at=found[-1].at, level="error", message=reason)
    return found


def answer_text(data: dict[str, Any]) -> str:
    """The text of a generateContent response's first candidate."""
    candidates = data.get("candidates") or []
    parts = ((candidates[0].get("content") or {}).get("parts") or []) if candidates else []
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int64(value: Any) -> int | Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


#: The ``@type`` of a ``google.rpc.RetryInfo`` error detail.
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
#: google.rpc.Code numbers → names (google/rpc/code.proto).
RPC_CODES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT",
             4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 6: "ALREADY_EXISTS",
             7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
             10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL",
             14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}
def describe_error(response: httpx.Response) -> ErrorInfo:
    """What a Google error response says: ``{"error": {"code", "message", "status",
    "details"}}``. RESOURCE_EXHAUSTED is throttling whatever the HTTP status; UNAVAILABLE
    comes as 503, which is retried like every 5xx; UNIMPLEMENTED (501) never will work. A
    ``google.rpc.RetryInfo`` detail's ``retryDelay`` says how long to wait."""
    request_id = (response.headers.get("x-request-id")
                  or response.headers.get("x-guploader-uploadid"))
    unimplemented = response.status_code == 501
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return ErrorInfo(response.text[:200].strip() or response.reason_phrase, request_id,
                         permanent=unimplemented)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ErrorInfo(str(body)[:200], request_id, permanent=unimplemented)
    status = error.get("status")
    status = str(status) if status else None
    message = str(error.get("message") or response.reason_phrase)
    if status:
        message = f"{status}: {message}"
    return ErrorInfo(message, request_id, status, throttled=status == "RESOURCE_EXHAUSTED",
                     permanent=unimplemented or status == "UNIMPLEMENTED",
                     retry_after=_retry_delay(error.get("details")))


def _retry_delay(details: Any) -> float | None:
    """Seconds a RetryInfo detail asks for (a proto3 JSON Duration such as ``"30s"``)."""
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO:
            match = re.fullmatch(r"(\d{1,9}(?:\.\d{1,9})?)s", str(detail.get("retryDelay")))
            if match is not None:
                return float(match.group(1))
    return None
