"""Submit and cancel as every front door sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator import jobs as job_ops
from orchestrator.blobs import BlobStore
from orchestrator.config import Settings
from orchestrator.db.engine import session_scope
from orchestrator.errors import DatasetError, IdempotencyConflict, JobNotFound, UserError
from tests.helpers import make_spec, write_dataset


def submit(settings: Settings, engine: sa.Engine, spec: object) -> job_ops.Submitted:
    return job_ops.submit(engine, BlobStore(settings.blob_dir), spec, source="s.yaml",  # type: ignore[arg-type]
                          project="default")


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one())


class TestSubmit:
    def test_the_dataset_is_snapshotted_so_later_edits_do_not_change_the_job(
            self, settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
        spec = make_spec(tmp_path)
        job = submit(settings, engine, spec).job
        original = (settings.blob_dir / job.training_blob[:2] / job.training_blob).read_bytes()
        spec.training_file.write_text("changed\n")

        assert BlobStore(settings.blob_dir).open_path(job.training_blob).read_bytes() == original

    def test_the_same_idempotency_key_returns_the_existing_job(
            self, settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
        first = submit(settings, engine, make_spec(tmp_path, idempotency_key="k1"))
        again = submit(settings, engine, make_spec(tmp_path, idempotency_key="k1"))

        assert (first.created, again.created) == (True, False)
        assert again.job.id == first.job.id
        assert count(engine) == 1

    def test_reusing_a_key_for_a_different_job_is_refused(
            self, settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
        submit(settings, engine, make_spec(tmp_path, idempotency_key="k1"))
        other = write_dataset(tmp_path / "other.jsonl", examples=20)
        with pytest.raises(IdempotencyConflict, match="already belongs to job"):
            submit(settings, engine, make_spec(tmp_path, idempotency_key="k1",
                                               training_file=other))
        assert count(engine) == 1

    def test_a_missing_dataset_is_a_user_error_and_nothing_is_written(
            self, settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
        spec = make_spec(tmp_path, training_file=tmp_path / "absent.jsonl")
        with pytest.raises(DatasetError, match=r"absent\.jsonl: cannot read the dataset"):
            submit(settings, engine, spec)
        assert count(engine) == 0


class TestCancel:
    def test_cancelling_a_finished_job_says_so(self, settings: Settings, engine: sa.Engine,
                                               tmp_path: Path) -> None:
        job = submit(settings, engine, make_spec(tmp_path)).job
        job_ops.cancel(engine, job.id)
        with pytest.raises(UserError, match="already cancelled"):
            job_ops.cancel(engine, job.id)

    def test_an_unknown_job_is_not_found(self, engine: sa.Engine) -> None:
        with pytest.raises(JobNotFound, match="no job 'job_nope'"), \
                session_scope(engine) as session:
            job_ops.get(session, "job_nope")


def test_a_dataset_that_is_not_a_regular_file_is_refused(settings: Settings, engine: sa.Engine,
                                                         tmp_path: Path) -> None:
    spec = make_spec(tmp_path, training_file=Path("/dev/zero"))
    with pytest.raises(DatasetError, match="/dev/zero: not a regular file"):
        submit(settings, engine, spec)
    assert count(engine) == 0


def test_a_spec_without_a_training_type_stores_and_digests_as_before(
        engine: sa.Engine, tmp_path: Path) -> None:
    """training_type and provider_options came later: leaving them out while unset keeps
    the digest of an older job, so re-submitting its idempotency key after an upgrade still
    finds it."""
    import hashlib
    import json

    spec = make_spec(tmp_path, idempotency_key="old-1")
    job = job_ops.submit(engine, BlobStore(tmp_path / "blobs"), spec, source="t",
                         project="default").job
    before = spec.model_dump(mode="json", exclude={"training_file", "validation_file",
                                                   "training_type", "provider_options"})
    digest = hashlib.sha256(json.dumps({**before, "training_blob": job.training_blob,
                                        "validation_blob": None}, sort_keys=True).encode())

    assert "training_type" not in job.spec and "provider_options" not in job.spec
    assert job.spec_sha256 == digest.hexdigest()
