"""A local emulator of DashScope's file, fine-tune and deployment HTTP API (FastAPI): tests,
demo, benchmarks.

`create_app()` serves the routes under /api/v1 with DashScope's envelopes (``data`` for files,
``output`` for fine-tunes and deployments, ``request_id`` on every body) and its error body
``{"code", "message", "request_id"}`` (the OpenAI-style ``{"error": {…}}`` for a bad upload
``purpose``, as captured from the real service). `tunectl emulator` mounts it under
/dashscope, so clients use ``http://HOST:PORT/dashscope/api/v1``. A Scenario
(emulator_state.py) injects 429s, 5xx and slow responses through the shared fault machinery
(providers/emulation.py), and fails jobs, deployments or uploads; admin routes under
/_emulator (below the mount) change it at run time and expose counters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.providers import emulation
from orchestrator.providers.dashscope.emulator_state import (
    ApiError,
    OpenAIShapedError,
    Scenario,
    Store,
    invalid,
)
from orchestrator.providers.emulation import (
    EmulatorMount,
    Throttle,
    admin_routes,
    emulator_app,
    request_id_of,
    route_path,
)

__all__ = ["Scenario", "create_app", "mount", "serve"]

API_PREFIX = "/api/v1/"
SERVER_ERRORS = {
    500: ("InternalError", "An internal error has occured, please try again later or contact "
                           "service support."),
    502: ("BadGateway", "Bad gateway."),
    503: ("ServiceUnavailable",
          "Service temporarily unavailable, possibly overloaded or not ready."),
}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(_store)]
PageNo = Annotated[int, Query(ge=1)]
JsonBody = Annotated[Any, Body()]


def _ok(request: Request, key: str, value: Any) -> dict[str, Any]:
    """A success body: ``value`` in the ``data`` (files) or ``output`` envelope."""
    return {"request_id": request_id_of(request), key: value}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")
    return body


# --- Files ------------------------------------------------------------------------------------


async def upload_files(
    request: Request,
    store: StoreDep,
    files: Annotated[list[UploadFile], File()],
    descriptions: Annotated[list[str] | None, Form()] = None,
    purpose: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    """Upload files (multipart ``files``, repeatable); quota failures come back in
    ``failed_uploads`` with HTTP 200."""
    items = [(f.filename or "file", await f.read()) for f in files]
    return _ok(request, "data", store.upload(items, descriptions or [], purpose))


def list_files(request: Request, store: StoreDep, page_no: PageNo = 1,
               page_size: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
    """One page of files, newest first."""
    return _ok(request, "data", store.list_files(page_no, page_size))


def get_file(request: Request, store: StoreDep, file_id: str) -> dict[str, Any]:
    """One file."""
    return _ok(request, "data", store.get_file(file_id))


def delete_file(request: Request, store: StoreDep, file_id: str) -> dict[str, Any]:
    """Delete a file (the body is only the request id)."""
    store.delete_file(file_id)
    return {"request_id": request_id_of(request)}


# --- Fine-tunes -------------------------------------------------------------------------------


def create_job(request: Request, store: StoreDep, body: JsonBody) -> dict[str, Any]:
    """Create a fine-tune job; it starts PENDING."""
    return _ok(request, "output", store.create_job(_object(body)))


def list_jobs(request: Request, store: StoreDep, page_no: PageNo = 1,
              page_size: Annotated[int, Query(ge=1, le=100)] = 10,
              model: str | None = None) -> dict[str, Any]:
    """One page of jobs, newest first."""
    return _ok(request, "output", store.list_jobs(page_no, page_size, model))


def get_job(request: Request, store: StoreDep, job_id: str) -> dict[str, Any]:
    """One job."""
    return _ok(request, "output", store.get_job(job_id))


def cancel_job(request: Request, store: StoreDep, job_id: str) -> dict[str, Any]:
    """Cancel a job that has not ended."""
    store.cancel_job(job_id)
    return _ok(request, "output", {"status": "success"})


def delete_job(request: Request, store: StoreDep, job_id: str) -> dict[str, Any]:
    """Delete a job that has ended."""
    store.delete_job(job_id)
    return _ok(request, "output", {"status": "success"})


def job_logs(request: Request, store: StoreDep, job_id: str,
             offset: Annotated[int, Query(ge=0)] = 0,
             line: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Training log lines: ``line`` of them after the first ``offset``."""
    return _ok(request, "output", store.job_logs(job_id, offset, line))


# --- Deployments ------------------------------------------------------------------------------


def create_deployment(request: Request, store: StoreDep, body: JsonBody) -> dict[str, Any]:
    """Deploy a fine-tuned model; it starts PENDING and bills from now."""
    return _ok(request, "output", store.create_deployment(_object(body)))


def list_deployments(request: Request, store: StoreDep, page_no: PageNo = 1,
                     page_size: Annotated[int, Query(ge=1, le=200)] = 10) -> dict[str, Any]:
    """One page of deployments, newest first."""
    return _ok(request, "output", store.list_deployments(page_no, page_size))


def get_deployment(request: Request, store: StoreDep, deployed_model: str) -> dict[str, Any]:
    """One deployment."""
    return _ok(request, "output", store.get_deployment(deployed_model))


def scale_deployment(request: Request, store: StoreDep, deployed_model: str,
                     body: JsonBody) -> dict[str, Any]:
    """Change a serving deployment's capacity."""
    capacity = _object(body).get("capacity")
    return _ok(request, "output", store.scale_deployment(deployed_model, capacity))


def delete_deployment(request: Request, store: StoreDep, deployed_model: str) -> dict[str, Any]:
    """Delete a deployment."""
    store.delete_deployment(deployed_model)
    return _ok(request, "output", {"status": "success"})


ROUTES: list[tuple[str, str, Callable[..., Any]]] = [
    ("POST", "/api/v1/files", upload_files),
    ("GET", "/api/v1/files", list_files),
    ("GET", "/api/v1/files/{file_id}", get_file),
    ("DELETE", "/api/v1/files/{file_id}", delete_file),
    ("POST", "/api/v1/fine-tunes", create_job),
    ("GET", "/api/v1/fine-tunes", list_jobs),
    ("GET", "/api/v1/fine-tunes/{job_id}", get_job),
    ("POST", "/api/v1/fine-tunes/{job_id}/cancel", cancel_job),
    ("DELETE", "/api/v1/fine-tunes/{job_id}", delete_job),
    ("GET", "/api/v1/fine-tunes/{job_id}/logs", job_logs),
    ("POST", "/api/v1/deployments", create_deployment),
    ("GET", "/api/v1/deployments", list_deployments),
    ("GET", "/api/v1/deployments/{deployed_model}", get_deployment),
    ("PUT", "/api/v1/deployments/{deployed_model}/scale", scale_deployment),
    ("DELETE", "/api/v1/deployments/{deployed_model}", delete_deployment),
    *admin_routes(Scenario),
]


# --- Errors -----------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, request_id: str) -> JSONResponse:
    return JSONResponse(ApiError(status, code, message).body(request_id), status_code=status)


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(request_id_of(request)), status_code=exc.status)


def _openai_shaped(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIShapedError)
    return JSONResponse(exc.body(), status_code=exc.status)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = "NotFound" if exc.status_code == 404 else "InvalidParameter"
    message = f"Not Found! ({request.method} {route_path(request.scope)})"
    if exc.status_code != 404:
        message = f"{exc.detail} ({request.method} {route_path(request.scope)})"
    return _error(exc.status_code, code, message, request_id_of(request))


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 becomes the 400 InvalidParameter DashScope sends."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"][1:]) or "body"
    if first["type"] == "json_invalid":
        message = "The request body is not valid JSON"
    elif first["type"] == "missing":
        message = f"Missing parameter: {param}"
    else:
        message = f"Invalid value for {param}: {first['msg']}"
    return _error(400, "InvalidParameter", message, request_id_of(request))


def _server_error(request: Request, exc: Exception) -> JSONResponse:
    code, message = SERVER_ERRORS[500]
    return _error(500, code, message, request_id_of(request))


class DashScopeRefusals:
    """401, 429 and 5xx as DashScope words them (no Retry-After: DashScope documents none)."""

    def request_id(self) -> str:
        return str(uuid.uuid4())

    def missing_key(self, request_id: str) -> Response:
        return _error(401, "InvalidApiKey", "No API-key provided.", request_id)

    def wrong_key(self, masked: str, request_id: str) -> Response:
        return _error(401, "InvalidApiKey", "Invalid API-key provided.", request_id)

    def throttled(self, fault: Throttle, request_id: str) -> Response:
        return _error(429, "Throttling.RateQuota",
                      "Requests rate limit exceeded, please try again later.", request_id)

    def server_error(self, status: int, request_id: str) -> Response:
        code, message = SERVER_ERRORS[status]
        return _error(status, code, message, request_id)


class ByteOrderMark:
    """Puts a UTF-8 BOM before every JSON body of the API while the scenario asks for it."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not route_path(scope).startswith(API_PREFIX)
                or not self.store.bom()):
            await self.app(scope, receive, send)
            return
        state = {"json": False, "first": True}

        async def prefix(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                state["json"] = headers.get("content-type", "").startswith("application/json")
                if state["json"] and "content-length" in headers:
                    headers["content-length"] = str(int(headers["content-length"]) + 3)
            elif message["type"] == "http.response.body" and state["json"] and state["first"]:
                state["first"] = False
                message = {**message, "body": b"\xef\xbb\xbf" + message.get("body", b"")}
            await send(message)

        await self.app(scope, receive, prefix)


# --- Factory ----------------------------------------------------------------------------------


def create_app(
    scenario: Scenario | None = None,
    *,
    api_key: str | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The emulator as an ASGI app (routes at /api/v1, admin at /_emulator).

    Args:
        scenario: how it behaves (default: a well-behaved server).
        api_key: the only bearer token accepted; None accepts any non-empty one.
        clock: seconds since the epoch; inject a fake one to drive jobs without sleeping.
    """
    store = Store(scenario or Scenario(), clock)
    return emulator_app("DashScope API emulator (tunectl)", store, ROUTES, {
        ApiError: _api_error, OpenAIShapedError: _openai_shaped,
        StarletteHTTPException: _http_error, RequestValidationError: _validation_error,
        Exception: _server_error,
    }, refusals=DashScopeRefusals(), api_key=api_key, api_prefix=API_PREFIX,
        inner=[(ByteOrderMark, {"store": store})])


#: Where `tunectl emulator` mounts this emulator.
PREFIX = "/dashscope"


def mount(*, job_duration_s: float, api_key: str | None) -> EmulatorMount:
    """The emulator as ``tunectl emulator`` serves it: under /dashscope, clients use
    /dashscope/api/v1; deployments take as long as jobs."""
    scenario = Scenario(job_duration_s=job_duration_s, deployment_duration_s=job_duration_s)
    return EmulatorMount("DashScope", PREFIX, "/api/v1", create_app(scenario, api_key=api_key))


def serve(host: str, port: int, scenario: Scenario | None = None,
          api_key: str | None = None) -> None:
    """Run the emulator alone (at the root) with uvicorn until interrupted."""
    emulation.serve(host, port, create_app(scenario, api_key=api_key))
