"""The HTTP API (FastAPI): ``app.create_app()`` builds it; ``auth`` holds the bearer tokens,
``problems`` the error documents and limits, ``jobs`` and ``ops`` the routes, and
``provider_webhooks`` the providers' signed webhooks in. Every route calls the same
operations as the CLI (orchestrator/jobs.py)."""
