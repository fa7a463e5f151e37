"""The FastAPI app: ``create_app()`` wires the routers, the error documents, the body limits
and the OpenAPI document. Another router joins by being added to ``ROUTERS``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from orchestrator import __version__
from orchestrator.api import jobs, ops, problems, provider_webhooks
from orchestrator.api.events import ProviderEvents
from orchestrator.blobs import BlobStore
from orchestrator.config import Settings
from orchestrator.db.engine import get_engine

#: Every router the app serves.
ROUTERS: tuple[APIRouter, ...] = (jobs.router, ops.router, provider_webhooks.router)


def create_app(settings: Settings, engine: sa.Engine | None = None) -> FastAPI:
    """The API for ``settings`` (on ``engine``, else the settings' database)."""
    app = FastAPI(title="tunectl", version=__version__,
                  description="Submit and follow LLM fine-tune jobs (docs/api.md).")
    app.state.api = jobs.ApiState(settings=settings,
                                  engine=engine or get_engine(settings.database_url),
                                  blobs=BlobStore.from_settings(settings),
                                  events=ProviderEvents(settings))
    for router in ROUTERS:
        app.include_router(router)
    problems.install(app)
    app.add_middleware(problems.RequestGuard, max_body=settings.api_max_body_bytes,
                       max_upload=settings.api_max_upload_bytes,
                       upload_paths=("/v1/datasets",))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the spec schema the submit route reads by hand, with every
    422 answered by a Problem (tunectl's handler) instead of FastAPI's default shape."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    spec = jobs.ApiJobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(spec.pop("$defs", {}))
    schemas["ApiJobSpec"] = spec
    problem = {"$ref": "#/components/schemas/Problem"}
    for path in doc["paths"].values():
        for operation in path.values():
            invalid = operation.get("responses", {}).get("422")
            if invalid is not None:
                invalid["content"] = {"application/json": {"schema": problem}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return doc
