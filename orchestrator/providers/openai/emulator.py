"""A local emulator of OpenAI's Files and Fine-tuning HTTP API (FastAPI): tests, demo, benchmarks.

`create_app()` serves the routes of the official spec under /v1 with its response shapes and its
error body; `serve()` runs it with uvicorn (`tunectl emulator` serves it at the root beside the
other providers' emulators). A Scenario (emulator_state.py) injects 429s, 5xx and slow
responses through the shared fault machinery (providers/emulation.py); admin routes under
/_emulator change it at run time and expose counters:

    GET  /_emulator/scenario    the current Scenario (fault counts left)
    PUT  /_emulator/scenario    replace it
    POST /_emulator/reset       forget all files, jobs and counters
    GET  /_emulator/stats       files, jobs (by status), requests per route, faults injected,
                                webhooks delivered and failed
    GET  /_emulator/jobs        every job's status and when it ended (for benchmarks)

With the scenario's ``webhooks`` set, jobs that end send OpenAI's signed fine-tuning webhooks
(emulator_webhooks.py).
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.providers import emulation
from orchestrator.providers.emulation import EmulatorMount, Throttle, admin_routes, emulator_app
from orchestrator.providers.openai import spec_schemas
from orchestrator.providers.openai.emulator_state import ApiError, Scenario, Store
from orchestrator.providers.openai.emulator_webhooks import WebhookSender

__all__ = ["Scenario", "create_app", "mount", "serve"]

MAX_FILE_BYTES = 512 * 1024 * 1024
UPLOAD_PURPOSES: list[str] = spec_schemas.component("CreateFileRequest")["properties"]["purpose"][
    "enum"]
CREATE_JOB_FIELDS = frozenset(spec_schemas.component("CreateFineTuningJobRequest")["properties"])
SERVER_ERROR_MESSAGES = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(_store)]


# --- Files -----------------------------------------------------------------------------------


def create_file(
    store: StoreDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
    anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
) -> dict[str, Any]:
    """Upload a file (multipart `file`, `purpose`, optional `expires_after[anchor|seconds]`)."""
    if purpose not in UPLOAD_PURPOSES:
        raise ApiError(400, f"'{purpose}' is not one of {UPLOAD_PURPOSES} - 'purpose'",
                       param="purpose")
    filename = file.filename or "file"
    if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl",
                       param="file")
    if file.size is not None and file.size > MAX_FILE_BYTES:
        raise ApiError(400, f"File is too large: {file.size} bytes, the limit is "
                            f"{MAX_FILE_BYTES} bytes", param="file")
    expires_after_s = None
    if anchor is not None or seconds is not None:
        expiry = {"anchor": anchor, "seconds": seconds}
        problems = spec_schemas.validate("FileExpirationAfter", expiry)
        if problems:
            raise ApiError(400, f"Invalid expires_after: {problems[0]}", param="expires_after")
        expires_after_s = seconds
    return store.create_file(filename, purpose, file.file.read(), expires_after_s)


def list_files(
    store: StoreDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    """List files, newest first by default."""
    return store.list_files(purpose, limit, order, after)


def retrieve_file(store: StoreDep, file_id: str) -> dict[str, Any]:
    """One file object."""
    return store.get_file(file_id)


def delete_file(store: StoreDep, file_id: str) -> dict[str, Any]:
    """Delete a file."""
    return store.delete_file(file_id)


def download_file(store: StoreDep, file_id: str) -> Response:
    """A file's bytes."""
    return Response(store.file_content(file_id), media_type="application/octet-stream")


def metadata_pairs(items: Iterable[tuple[str, str]]) -> tuple[dict[str, str], bool]:
    """The `metadata[k]=v` filters of a query string, and whether `metadata=null` was sent.

    Raises:
        ApiError: both forms were combined.
    """
    pairs: dict[str, str] = {}
    null = False
    for key, value in items:
        match = re.fullmatch(r"metadata\[(.+)\]", key)
        if match:
            pairs[match.group(1)] = value
        elif key == "metadata":
            if value != "null":
                raise ApiError(400, "Use metadata[key]=value to filter by metadata, or "
                                    "metadata=null for jobs without metadata", param="metadata")
            null = True
    if pairs and null:
        raise ApiError(400, "Do not combine metadata=null with metadata[key]=value",
                       param="metadata")
    return pairs, null


# --- Fine-tuning jobs ------------------------------------------------------------------------


def create_job(store: StoreDep, body: dict[str, Any]) -> dict[str, Any]:
    """Create a job from a CreateFineTuningJobRequest, checked against the spec's schema."""
    for key in body:
        if key not in CREATE_JOB_FIELDS:
            raise ApiError(400, f"Unrecognized request argument supplied: {key}", param=key)
    for error in spec_schemas.errors("CreateFineTuningJobRequest", body):
        if error.validator == "required":
            missing = re.search(r"'(.+)' is a required property", error.message)
            name = ".".join([*map(str, error.absolute_path), missing.group(1) if missing else ""])
            raise ApiError(400, f"Missing required parameter: '{name.strip('.')}'.",
                           param=name.strip("."))
        param = ".".join(map(str, error.absolute_path)) or None
        raise ApiError(400, f"Invalid value for '{param}': {error.message}.", param=param)
    return store.create_job(body)


def list_jobs(
    request: Request,
    store: StoreDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 20,
) -> dict[str, Any]:
    """List jobs, newest first; `metadata[k]=v` filters, `metadata=null` selects jobs without."""
    pairs, null = metadata_pairs(request.query_params.multi_items())
    return store.list_jobs(after, limit, pairs, null)


def retrieve_job(store: StoreDep, fine_tuning_job_id: str) -> dict[str, Any]:
    """One job, advanced to now."""
    return store.get_job(fine_tuning_job_id)


def cancel_job(store: StoreDep, fine_tuning_job_id: str) -> dict[str, Any]:
    """Cancel a job that has not finished."""
    return store.cancel_job(fine_tuning_job_id)


def pause_job(store: StoreDep, fine_tuning_job_id: str) -> dict[str, Any]:
    """Pause a job in progress."""
    return store.pause_job(fine_tuning_job_id)


def resume_job(store: StoreDep, fine_tuning_job_id: str) -> dict[str, Any]:
    """Resume a paused job."""
    return store.resume_job(fine_tuning_job_id)


def list_events(
    store: StoreDep,
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 20,
) -> dict[str, Any]:
    """A job's events, newest first."""
    return store.list_events(fine_tuning_job_id, after, limit)


def ended_jobs(store: StoreDep) -> list[dict[str, Any]]:
    """Every job's status and when it ended, unrounded (benchmarks measure from it)."""
    return store.ended_jobs()


def list_checkpoints(
    store: StoreDep,
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 10,
) -> dict[str, Any]:
    """A job's checkpoints, newest first."""
    return store.list_checkpoints(fine_tuning_job_id, after, limit)


ROUTES: list[tuple[str, str, Callable[..., Any]]] = [
    ("POST", "/v1/files", create_file),
    ("GET", "/v1/files", list_files),
    ("GET", "/v1/files/{file_id}", retrieve_file),
    ("DELETE", "/v1/files/{file_id}", delete_file),
    ("GET", "/v1/files/{file_id}/content", download_file),
    ("POST", "/v1/fine_tuning/jobs", create_job),
    ("GET", "/v1/fine_tuning/jobs", list_jobs),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}", retrieve_job),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", cancel_job),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause", pause_job),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume", resume_job),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", list_events),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", list_checkpoints),
    *admin_routes(Scenario),
    ("GET", "/_emulator/jobs", ended_jobs),
]


# --- Errors ----------------------------------------------------------------------------------


def _error(status: int, message: str, *, type: str = "invalid_request_error",
           param: str | None = None, code: str | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, message, param=param, code=code, type=type).body(),
                        status_code=status, headers=headers)


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405):
        message = f"Invalid URL ({request.method} {request.url.path})"
    else:
        message = str(exc.detail)
    return _error(exc.status_code, message, headers=exc.headers)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 becomes the 400 OpenAI sends for a bad parameter."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"][1:]) or None
    if first["type"] == "json_invalid":
        message = "We could not parse the JSON body of your request."
    elif first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first['msg']}."
    return _error(400, message, param=param)


def _server_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, SERVER_ERROR_MESSAGES[500], type="server_error")


# --- Refusals --------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """A reset duration as the x-ratelimit-reset-* headers write it: "120ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


class OpenAIRefusals:
    """401, 429 and 5xx as OpenAI words them."""

    def request_id(self) -> str:
        return f"req_{secrets.token_hex(16)}"

    def missing_key(self, request_id: str) -> Response:
        return _error(401, "You didn't provide an API key. You need to provide your API key "
                           "in an Authorization header using Bearer auth (i.e. "
                           "Authorization: Bearer YOUR_KEY).")

    def wrong_key(self, masked: str, request_id: str) -> Response:
        return _error(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")

    def throttled(self, fault: Throttle, request_id: str) -> Response:
        wait = fault.retry_after_s
        reset = _duration(wait)
        return _error(
            429, f"Rate limit reached for requests in organization emulator on requests per "
                 f"min (RPM). Please try again in {reset}.",
            type="requests", code="rate_limit_exceeded",
            headers={"retry-after-ms": str(round(wait * 1000)),
                     "retry-after": str(math.ceil(wait)),
                     "x-ratelimit-limit-requests": "500",
                     "x-ratelimit-remaining-requests": "0",
                     "x-ratelimit-reset-requests": reset,
                     "x-ratelimit-limit-tokens": "200000",
                     "x-ratelimit-remaining-tokens": "200000",
                     "x-ratelimit-reset-tokens": "0s"})

    def server_error(self, status: int, request_id: str) -> Response:
        return _error(status, SERVER_ERROR_MESSAGES[status], type="server_error")


# --- Factory ---------------------------------------------------------------------------------


def create_app(
    scenario: Scenario | None = None,
    *,
    api_key: str | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The emulator as an ASGI app.

    Args:
        scenario: how it behaves (default: a well-behaved server).
        api_key: the only bearer token accepted; None accepts any non-empty one.
        clock: seconds since the epoch; inject a fake one to drive jobs without sleeping.
    """
    store = Store(scenario or Scenario(), clock)
    app = emulator_app("OpenAI API emulator (tunectl)", store, ROUTES, {
        ApiError: _api_error, StarletteHTTPException: _http_error,
        RequestValidationError: _validation_error, Exception: _server_error,
    }, refusals=OpenAIRefusals(), api_key=api_key, api_prefix="/v1/")
    app.state.webhooks = WebhookSender(store, clock)
    return app


def mount(*, job_duration_s: float, api_key: str | None) -> EmulatorMount:
    """The emulator as ``tunectl emulator`` serves it: at the root, clients use /v1."""
    return EmulatorMount("OpenAI", "", "/v1",
                         create_app(Scenario(job_duration_s=job_duration_s), api_key=api_key))


def serve(host: str, port: int, scenario: Scenario | None = None,
          api_key: str | None = None) -> None:
    """Run the emulator alone with uvicorn until interrupted."""
    emulation.serve(host, port, create_app(scenario, api_key=api_key))

