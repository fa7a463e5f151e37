"""Column types and ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job
from orchestrator.db.transition import insert_job
from orchestrator.db.types import new_id
from orchestrator.jobs import get


def test_timestamps_come_back_aware_in_utc_whatever_zone_went_in(engine: sa.Engine) -> None:
    plus_two = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    job = Job(id=new_id("job"), name="t", provider="openai", base_model="m", method="sft",
              spec={"k": [1, "ü"]}, spec_sha256="0" * 64, training_blob="0" * 64)
    with session_scope(engine) as session:
        insert_job(session, job, reason="t", now=plus_two)
    with session_scope(engine) as session:
        back = get(session, job.id)

    assert back.created_at == plus_two
    assert back.created_at.tzinfo == UTC
    assert back.spec == {"k": [1, "ü"]}


def test_naive_datetimes_are_refused(engine: sa.Engine) -> None:
    job = Job(id=new_id("job"), name="t", provider="openai", base_model="m", method="sft",
              spec={}, spec_sha256="0" * 64, training_blob="0" * 64)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), \
            session_scope(engine) as session:
        insert_job(session, job, reason="t", now=datetime(2026, 1, 1, 12, 0))


def test_ids_are_unique_and_sort_by_creation_time() -> None:
    ids = [new_id("job") for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids[0][:14] <= ids[-1][:14]
    assert all(len(i) == 30 and i.startswith("job_") for i in ids)
