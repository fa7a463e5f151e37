"""Operator routes: liveness, readiness (the database and the broker answer) and metrics."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from orchestrator import metrics
from orchestrator.api.auth import Caller, admin
from orchestrator.api.jobs import ApiState, api_state
from orchestrator.api.problems import responses
from orchestrator.db.engine import check_migrated
from orchestrator.errors import DatabaseNotMigrated, one_line

router = APIRouter(tags=["operations"])
log = structlog.get_logger("tunectl.api")


class Health(BaseModel):
    """The process is up."""

    status: str


class Readiness(BaseModel):
    """Whether each dependency answered: "ok", or a generic reason (the log says more)."""

    database: str
    broker: str


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """200 while the process serves requests (needs no token)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness",
            responses={503: {"model": Readiness, "description": "the database or the broker "
                             "does not answer"}})
async def readyz(state: Annotated[ApiState, Depends(api_state)]) -> JSONResponse:
    """200 when the database (migrated to this version) and the broker answer; 503 and
    which one failed otherwise (needs no token, so it names no host: the log does)."""
    database, broker = await run_in_threadpool(_database, state), \
        await run_in_threadpool(_broker, state)
    ready = Readiness(database=database, broker=broker)
    return JSONResponse(ready.model_dump(), status_code=200 if ready.database == ready.broker
                        == "ok" else 503)


def _database(state: ApiState) -> str:
    try:
        check_migrated(state.engine)
    except DatabaseNotMigrated as exc:
        log.error("api.not_ready", dependency="database", error=str(exc))
        return "not migrated: run `tunectl db upgrade`"
    except Exception as exc:
        log.error("api.not_ready", dependency="database", error=one_line(exc))
        return "unavailable"
    return "ok"


def _broker(state: ApiState) -> str:
    from kombu.connection import Connection

    try:
        with Connection(state.settings.broker_url,  # type: ignore[no-untyped-call]
                        connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        log.error("api.not_ready", dependency="broker", error=one_line(exc))
        return "unavailable"
    return "ok"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "the Prometheus text format"},
                       **responses(401, 403, 503)})
def prometheus(state: Annotated[ApiState, Depends(api_state)],
               _: Annotated[Caller, Depends(admin)]) -> Response:
    """Fleet-wide figures from the database (503 when it does not answer), and this
    process's own (admin token)."""
    return Response(metrics.exposition(state.engine),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
