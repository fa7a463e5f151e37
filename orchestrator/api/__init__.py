"""The HTTP API (FastAPI): ``app.create_app()`` builds it; ``auth`` holds the bearer tokens,
``problems`` the error documents and limits, ``jobs`` and ``ops`` the routes. Every route
calls the same operations as the CLI (orchestrator/jobs.py)."""
