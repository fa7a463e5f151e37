"""How the API says no: one error document (``{"detail": "<one line>"}``, the same line the
CLI prints) for every refusal, the status each error class gets, and the request size
limits, enforced while the body is read so an oversized upload is never stored.

A database that does not answer is a 503 with a generic line: the driver's own message
names hosts, ports and users, so it goes to the log only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import (
    BlobStoreError,
    CannotCancel,
    DatabaseNotMigrated,
    IdempotencyConflict,
    InvalidCursor,
    JobNotFound,
    ProviderError,
    UserError,
    one_line,
)

log = structlog.get_logger("tunectl.api")

#: What a client is told when the database does not answer (the reason is logged).
DATABASE_DOWN = "the database is unavailable; try again shortly"


class Problem(BaseModel):
    """Why a request was refused, in one line: what, where, and how to fix it."""

    detail: str


#: What each error means over HTTP (the first matching class wins).
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (JobNotFound, 404),
    (IdempotencyConflict, 409),
    (CannotCancel, 409),
    (InvalidCursor, 422),
    (DatabaseNotMigrated, 503),
    (UserError, 400),
    (BlobStoreError, 503),
    (ProviderError, 502),
)

_WHY = {400: "the request is invalid", 401: "no valid API token", 403: "not allowed for "
        "this token", 404: "no such job (or not this token's project)", 409: "conflicts "
        "with the job's state or an earlier submit", 413: "the body is too large",
        415: "unsupported content type", 422: "a parameter is invalid",
        502: "the provider failed", 503: "a dependency is unavailable"}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the refusals a route can give."""
    return {code: {"model": Problem, "description": _WHY[code]} for code in codes}


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install(app: Any) -> None:
    """Answer every refusal with a Problem."""

    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return problem(422, f"{where}: {first.get('msg', 'invalid')}{more}")

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if not _unavailable(exc):
            raise exc  # a bug (a constraint, a bad statement): the server's 500
        log.error("api.database_unavailable", path=request.url.path, error=one_line(exc))
        return problem(503, DATABASE_DOWN, {"Retry-After": "5"})

    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(sa.exc.DBAPIError, _database)
    app.add_exception_handler(sa.exc.TimeoutError, _database)

    for cls, status in STATUS:
        def handler(_: Request, exc: Exception, status: int = status) -> JSONResponse:
            return problem(status, str(exc))

        app.add_exception_handler(cls, handler)


def _unavailable(exc: Exception) -> bool:
    """Whether ``exc`` means the database does not answer (down, unreachable, restarted,
    locked, or every pooled connection busy), rather than a bug."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.TimeoutError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated)


class RequestGuard:
    """ASGI middleware: refuse a NUL character in the path or query (422: no database
    stores one in text), and a body over its limit (413, by Content-Length up front or
    while it streams). Dataset uploads (``upload_paths``) get the larger limit."""

    def __init__(self, app: ASGIApp, *, max_body: int, max_upload: int,
                 upload_paths: tuple[str, ...]) -> None:
        self.app, self.max_body, self.max_upload = app, max_body, max_upload
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            await problem(422, "the path or query holds a NUL character; remove it")(
                scope, receive, send)
            return
        limit = self.max_upload if self._is_upload(scope) else self.max_body
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(limit, scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, counted, send)

    def _is_upload(self, scope: Scope) -> bool:
        if scope["path"] in self.upload_paths:
            return True
        content_type: bytes = dict(scope["headers"]).get(b"content-type", b"")
        return scope["path"] == "/v1/jobs" and content_type.startswith(b"multipart/")

    async def _refuse(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        await problem(413, _too_large(limit))(scope, receive, send)


def _too_large(limit: int) -> str:
    return (f"the request body is over the limit of {limit} bytes; send a smaller one "
            "(TUNECTL_API_MAX_BODY_BYTES / TUNECTL_API_MAX_UPLOAD_BYTES set the limits)")
