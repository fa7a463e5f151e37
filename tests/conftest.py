"""Shared fixtures. ``TUNECTL_TEST_STACK`` picks the stack every database test runs on:

- ``embedded`` (default): SQLite files and Celery's SQLAlchemy transport; no servers.
- ``production``: PostgreSQL and Redis on loopback. A missing server fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.db.engine import get_engine, make_engine
from orchestrator.db.migrate import upgrade

STACK = os.environ.get("TUNECTL_TEST_STACK", "embedded")
PG_ADMIN_URL = os.environ.get("TUNECTL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TUNECTL_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
API_KEY = "sk-test-4f9a8b7c6d5e"
TABLES = ("provider_webhooks_seen", "webhook_attempts", "webhook_deliveries", "webhook_endpoints",
          "deployment_transitions", "deployments", "job_transitions", "provider_files",
          "uploaded_datasets", "jobs")

if STACK not in ("embedded", "production"):
    raise pytest.UsageError(f"TUNECTL_TEST_STACK={STACK!r}: use embedded or production")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs TUNECTL_TEST_STACK=production (the CI's second pass)")
    for item in items:
        if "postgres" in item.keywords and STACK != "production":
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo any log.configure() a test made, so handlers never outlive captured streams."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _close_the_shared_http_client() -> Iterator[None]:
    """Close the process's provider client a test left open (an in-process CLI run makes
    one), so its socket never leaks into a later test as a ResourceWarning."""
    yield
    from orchestrator.notify import deliver
    from orchestrator.providers import http

    client = http._client
    if client is not None:
        client.close()
        http.set_shared_client(None)
    deliver.reset_client()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for this test session, on the selected stack."""
    if STACK == "embedded":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'tunectl.db'}"
        _migrate(url)
        yield url
        get_engine(url).dispose()
        return
    name = f"tunectl_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}", pytrace=False)
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
    _migrate(url)
    yield url
    get_engine(url).dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _migrate(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Celery broker for this test session, on the selected stack."""
    if STACK == "embedded":
        return f"sqla+sqlite:///{tmp_path_factory.mktemp('broker') / 'broker.db'}"
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}", pytrace=False)
    return REDIS_URL


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """The session database, emptied after each test."""
    engine = get_engine(database_url)
    yield engine
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)}")
        else:
            for table in TABLES:
                conn.exec_driver_sql(f"DELETE FROM {table}")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, broker_url: str) -> Settings:
    """Settings for one test: its own data dir, fast timings, emulator keys (a Google
    service-account key file whose token_uri is the emulator's)."""
    from tests.helpers import GOOGLE_BASE, service_account_file

    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, broker_url=broker_url,
        openai_base_url="http://emulator.test/v1", openai_api_key=API_KEY,
        dashscope_base_url="http://emulator.test/dashscope/api/v1", dashscope_api_key=API_KEY,
        vertex_base_url=GOOGLE_BASE, gcs_base_url=GOOGLE_BASE, gcs_bucket="tunectl-test-data",
        google_application_credentials=service_account_file(tmp_path / "google-sa.json"),
        poll_interval_s=1.0, scheduler_tick_s=0.05, lease_s=60.0, retry_base_s=1.0,
        retry_cap_s=30.0, max_attempts=5,
    )
