"""`tunectl.submit`, the task other services `send_task` a spec to: it queues the job like
the API does, and drops (logging why) a spec that could never be queued."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.blobs import BlobStore
from orchestrator.config import Settings, get_settings
from orchestrator.db.engine import session_scope
from orchestrator.jobs import get
from tests.helpers import write_dataset


@pytest.fixture
def configured(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TUNECTL_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TUNECTL_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_a_sent_spec_naming_a_stored_dataset_is_queued_once(
        configured: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    from workers.tasks import SUBMIT_TASK, submit

    sha = BlobStore.from_settings(configured).put_stream(
        io.BytesIO(write_dataset(tmp_path / "t.jsonl").read_bytes()), "t")
    spec = {"name": "queued", "provider": "openai", "base_model": "gpt-4o-mini-2024-07-18",
            "training_file": f"sha256:{sha}", "idempotency_key": "pipeline-42"}

    job_id = submit(spec, "pipelines")
    assert submit(spec, "pipelines") == job_id  # a message delivered twice: one job
    assert submit.name == SUBMIT_TASK == "tunectl.submit"
    with session_scope(engine) as session:
        job = get(session, str(job_id))
    assert (job.project, job.state, job.training_blob) == ("pipelines", "queued", sha)


@pytest.mark.parametrize(("change", "why"), [
    ({"idempotency_key": None}, "idempotency_key: is required for a queued submit"),
    ({"training_file": "/data/train.jsonl"}, "name a dataset already stored as sha256:<hex>"),
    ({"training_file": "sha256:" + "0" * 64}, "no dataset sha256:0000"),
    ({"name": ""}, "name: must be 1-128 letters"),
])
def test_a_spec_that_cannot_be_queued_is_dropped_with_the_reason_logged(
        configured: Settings, engine: sa.Engine, change: dict[str, object], why: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator import log
    from workers.tasks import submit

    log.configure("json", "info")
    spec = {"name": "queued", "provider": "openai", "base_model": "gpt-4o-mini-2024-07-18",
            "training_file": "sha256:" + "0" * 64, "idempotency_key": "k", **change}
    spec = {k: v for k, v in spec.items() if v is not None}

    assert submit(spec) is None
    err = capsys.readouterr().err
    assert "submit.rejected" in err and why in err
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 0


@pytest.mark.parametrize("project", [
    pytest.param("x" * 65, id="longer-than-the-column"),
    pytest.param("Support Team", id="not-a-project-name"),
    pytest.param("alpha\n", id="a-trailing-newline"),
    pytest.param("", id="empty"),
    pytest.param(42, id="not-a-string"),
])
def test_a_bad_project_is_dropped_with_the_reason_logged(
        configured: Settings, engine: sa.Engine, tmp_path: Path, project: object,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same rule as an API token's project: a 65-character one was a DataError on
    PostgreSQL (jobs.project is 64 wide), retried by Celery to no end."""
    from orchestrator import log
    from workers.tasks import submit

    log.configure("json", "info")
    sha = BlobStore.from_settings(configured).put_stream(
        io.BytesIO(write_dataset(tmp_path / "t.jsonl").read_bytes()), "t")
    spec = {"name": "queued", "provider": "openai", "base_model": "gpt-4o-mini-2024-07-18",
            "training_file": f"sha256:{sha}", "idempotency_key": "k"}

    assert submit(spec, project) is None
    err = capsys.readouterr().err
    assert "submit.rejected" in err and "project" in err
    assert "must be 1-64 lower-case letters, digits" in err
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 0
