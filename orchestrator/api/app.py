"""The HTTP API app (``tunectl api``): the inbound provider webhooks router and
``GET /healthz``."""

from __future__ import annotations

from fastapi import FastAPI

from orchestrator import __version__
from orchestrator.api import provider_webhooks


def create_app() -> FastAPI:
    """The API as an ASGI app."""
    app = FastAPI(title="tunectl", version=__version__)
    app.include_router(provider_webhooks.router)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    return app
