"""`tunectl up` as a real process on the selected stack: jobs go end to end through a real
Celery worker and the scheduler, its API answers, and its logs are JSON lines that never
contain the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator import jobs as job_ops
from orchestrator.blobs import BlobStore
from orchestrator.config import Settings
from orchestrator.db.engine import session_scope
from orchestrator.providers.openai.emulator import Scenario, create_app
from tests.conftest import API_KEY
from tests.helpers import make_spec, serve_in_thread


@pytest.fixture
def emulator_url() -> Iterator[str]:
    with serve_in_thread(create_app(Scenario(job_duration_s=1.0))) as url:
        yield url


@pytest.fixture
def api_port() -> int:
    from orchestrator.loopback import free_port

    return free_port()


@pytest.fixture
def daemon(settings: Settings, emulator_url: str, tmp_path: Path,
           api_port: int) -> Iterator[Path]:
    log = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNECTL_", "OPENAI_"))}
    env.update(TUNECTL_DATA_DIR=str(settings.data_dir),
               TUNECTL_DATABASE_URL=settings.database_url,
               TUNECTL_BROKER_URL=settings.broker_url,
               TUNECTL_OPENAI_BASE_URL=f"{emulator_url}/v1", OPENAI_API_KEY=API_KEY,
               TUNECTL_POLL_INTERVAL_S="0.3", TUNECTL_SCHEDULER_TICK_S="0.2",
               TUNECTL_LOG_LEVEL="info", TUNECTL_API_PORT=str(api_port))
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up"], env=env,
                                stdout=sink, stderr=sink)
    yield log
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_jobs_run_end_to_end_and_logs_never_show_the_key(
        settings: Settings, engine: sa.Engine, daemon: Path, tmp_path: Path,
        api_port: int) -> None:
    blobs = BlobStore(settings.blob_dir)
    ids = [job_ops.submit(engine, blobs, make_spec(tmp_path, name=f"daemon-{i}"),
                          source="test", project="default").job.id for i in range(3)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session_scope(engine) as session:
            states = [job_ops.get(session, i).state for i in ids]
        if all(s == "succeeded" for s in states):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"jobs ended {states}; daemon log:\n{daemon.read_text()[-3000:]}")

    lines = [json.loads(line) for line in daemon.read_text().splitlines()
             if line.startswith("{")]
    finished = [x for x in lines if x.get("event") == "step.finished"]
    assert {x["job_id"] for x in finished} == set(ids)
    assert all(x["step"] and x["provider"] == "openai" for x in finished)
    assert API_KEY not in daemon.read_text()
    # The same process serves the API.
    import httpx

    ready = httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"database": "ok", "broker": "ok"}
