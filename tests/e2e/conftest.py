"""Fixtures for the end-to-end tests (processes in processes.py).

``procs`` kills every process a test started at teardown, and a failed test's report
gets the tail of each process log. ``stack`` wires the processes to the selected test
stack (``TUNECTL_TEST_STACK``): the session database from tests/conftest.py (emptied
after each test), and a broker of the e2e tests' own (a per-test SQLite file, or Redis
DB 11 flushed per test, so that suites sharing DB 9 never consume or flush our messages).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import STACK
from tests.e2e.processes import E2E_REDIS_URL, Procs, Stack


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """The test's process tracker; every process is killed at teardown."""
    tracker = Procs(tmp_path / "logs")
    try:
        yield tracker
    finally:
        tracker.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure, attach the tail of each process log to the report."""
    report = yield
    tracker = getattr(item, "funcargs", {}).get("procs")
    if report.failed and isinstance(tracker, Procs) and tracker.started:
        report.sections.append(("process logs (tails)", tracker.report()))
    return report


@pytest.fixture
def e2e_broker_url(tmp_path: Path) -> Iterator[str]:
    """A broker nobody else uses: a per-test SQLite file, or Redis DB 11 flushed around
    each test."""
    if STACK == "embedded":
        yield f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        return
    import redis

    try:
        with redis.Redis.from_url(E2E_REDIS_URL) as client:
            client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {E2E_REDIS_URL}: {exc}", pytrace=False)
    yield E2E_REDIS_URL
    with redis.Redis.from_url(E2E_REDIS_URL) as client:
        client.flushdb()


@pytest.fixture
def stack(tmp_path: Path, engine: sa.Engine, database_url: str, e2e_broker_url: str,
          procs: Procs) -> Iterator[Stack]:
    """A tunectl deployment for one test (processes killed before the DB is emptied)."""
    deployment = Stack(tmp_path, engine, database_url, e2e_broker_url, procs)
    try:
        yield deployment
    finally:
        procs.close()
        if deployment.emulator is not None:
            deployment.emulator.close()
