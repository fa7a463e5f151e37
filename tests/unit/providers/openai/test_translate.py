"""OpenAI translation: the status table against the spec, and request bodies the spec accepts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from orchestrator.providers.base import JobRequest, RemoteStatus
from orchestrator.providers.openai import spec_schemas, translate


def test_the_status_table_covers_every_status_in_the_spec() -> None:
    enum = spec_schemas.component("FineTuningJob")["properties"]["status"]
    values = set(enum.get("enum") or [v for s in enum.get("anyOf", []) for v in s.get("enum", [])])

    assert values
    assert values <= set(translate.STATUS)


def test_unknown_statuses_read_as_still_running() -> None:
    assert translate.status_of("some_new_status") is RemoteStatus.RUNNING
    assert translate.status_of("paused") is RemoteStatus.RUNNING
    assert translate.status_of("cancelled") is RemoteStatus.CANCELLED


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_job_bodies_validate_against_the_spec(method: str) -> None:
    body = translate.job_body(JobRequest(
        job_id="job_1", base_model="gpt-4o-mini-2024-07-18", method=method,
        training_file_id="file-a", validation_file_id="file-b",
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": "auto",
                         **({"beta": 0.1} if method == "dpo" else {})},
        suffix="bot", labels={"team": "x"}, seed=7))

    assert spec_schemas.validate("CreateFineTuningJobRequest", body) == []
    assert body["metadata"] == {"team": "x", translate.JOB_ID_KEY: "job_1"}


@pytest.mark.parametrize(("error", "expected"), [
    pytest.param(None, "OpenAI reported the job failed without a reason", id="null"),
    pytest.param({"code": None, "message": None, "param": None},
                 "OpenAI reported the job failed without a reason", id="all-null-object"),
    pytest.param({"code": "invalid_training_file", "message": "Line 3 bad",
                  "param": "training_file"},
                 "invalid_training_file: Line 3 bad (param training_file)", id="full"),
])
def test_failed_jobs_carry_a_one_line_reason(error: object, expected: str) -> None:
    job = translate.remote_job({"id": "ftjob-1", "status": "failed", "error": error})
    assert (job.status, job.error) == (RemoteStatus.FAILED, expected)


def test_error_bodies_of_every_shape_give_a_message() -> None:
    ok = httpx.Response(400, headers={"x-request-id": "req_9"}, json={
        "error": {"message": "bad", "type": "invalid_request_error", "param": None,
                  "code": "insufficient_quota"}})
    info = translate.describe_error(ok)
    assert (info.message, info.request_id, info.permanent) == (
        "bad (insufficient_quota)", "req_9", True)
    assert translate.describe_error(httpx.Response(502, text="<html>bad gateway")).message == (
        "<html>bad gateway")
    assert translate.describe_error(httpx.Response(500, json=["x"])).message


def test_spec_checks_refuse_more_labels_than_metadata_holds(tmp_path: Path) -> None:
    from orchestrator.errors import SpecError
    from tests.helpers import make_spec

    spec = make_spec(tmp_path, labels={f"k{i}": "v" for i in range(16)})
    with pytest.raises(SpecError, match="at most 15 labels"):
        translate.check_spec(spec, "spec.yaml")
