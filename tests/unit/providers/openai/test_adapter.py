"""The OpenAI adapter against the in-process emulator (which validates requests by the spec)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from orchestrator.errors import ProviderAuthError, ProviderRejected, ProviderUnavailable
from orchestrator.providers.base import JobRequest, RemoteStatus
from orchestrator.providers.openai.adapter import OpenAIClient
from orchestrator.providers.openai.emulator import Scenario
from tests.helpers import Clock, in_process_emulator, write_dataset

SHA = "ab" * 32


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client(http: httpx.Client, key: str = "sk-test-key-123456", **kw: str) -> OpenAIClient:
    return OpenAIClient(http, base_url="http://emulator.test/v1", api_key=key, **kw)


def request(job_id: str, file_id: str) -> JobRequest:
    return JobRequest(job_id=job_id, base_model="gpt-4o-mini-2024-07-18", method="sft",
                      training_file_id=file_id, validation_file_id=None,
                      hyperparameters={"n_epochs": 2}, suffix="t", labels={"team": "a"})


def test_an_uploaded_dataset_is_found_again_by_its_hash(clock: Clock, tmp_path: Path) -> None:
    with in_process_emulator(clock) as http:
        openai = client(http)
        assert openai.find_file(SHA) is None
        uploaded = openai.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA)
        found = openai.find_file(SHA)

    assert found is not None and found.id == uploaded.id
    assert found.bytes == (tmp_path / "d.jsonl").stat().st_size


def test_a_created_job_is_found_by_the_tunectl_job_id(clock: Clock, tmp_path: Path) -> None:
    with in_process_emulator(clock, Scenario(job_duration_s=10)) as http:
        openai = client(http)
        file_id = openai.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
        created = openai.create_job(request("job_a", file_id))
        openai.create_job(request("job_b", file_id))

        assert openai.find_job("job_a") == created
        assert openai.find_job("job_zzz") is None
        clock.advance(11)
        done = openai.get_job(created.id)

    assert created.status is RemoteStatus.RUNNING
    assert created.provider_status == "validating_files"
    assert done.status is RemoteStatus.SUCCEEDED
    assert done.fine_tuned_model and done.result["trained_tokens"] > 0


def test_cancel_and_events(clock: Clock, tmp_path: Path) -> None:
    with in_process_emulator(clock, Scenario(job_duration_s=10)) as http:
        openai = client(http)
        file_id = openai.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
        job = openai.create_job(request("job_a", file_id))
        clock.advance(1)
        cancelled = openai.cancel_job(job.id)
        events = openai.list_events(job.id)
        with pytest.raises(ProviderRejected):
            openai.cancel_job(job.id)  # a finished job cannot be cancelled again

    assert cancelled.status is RemoteStatus.CANCELLED
    assert events and events[0].at <= events[-1].at


def test_a_wrong_key_is_a_permanent_auth_error(clock: Clock) -> None:
    from fastapi.testclient import TestClient

    from orchestrator.providers.openai.emulator import create_app

    with TestClient(create_app(api_key="sk-right"), base_url="http://emulator.test") as http:
        with pytest.raises(ProviderAuthError, match="HTTP 401"):
            client(http, key="sk-wrong").find_file(SHA)
        assert client(http, key="sk-right").find_file(SHA) is None


def test_org_and_project_headers_are_sent_and_the_account_depends_on_them() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    a = client(http, organization="org-1", project="proj-1")
    a.find_job("job_x")

    assert seen[0].headers["openai-organization"] == "org-1"
    assert seen[0].headers["openai-project"] == "proj-1"
    assert seen[0].url.params["metadata[tunectl_job_id]"] == "job_x"
    assert a.account != client(http, organization="org-2").account
    assert "sk-test" not in a.account


def test_a_success_that_is_not_json_is_retryable() -> None:
    http = httpx.Client(transport=httpx.MockTransport(
        lambda req: httpx.Response(200, text="<html>proxy login</html>")))
    with pytest.raises(ProviderUnavailable, match="not JSON"):
        client(http).get_job("ftjob-1")


def test_an_unknown_status_is_logged_and_read_as_running(
        capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator import log

    log.configure("json", "info")
    http = httpx.Client(transport=httpx.MockTransport(
        lambda req: httpx.Response(200, json={"id": "ftjob-1", "status": "warming_up"})))
    job = client(http).get_job("ftjob-1")

    assert job.status is RemoteStatus.RUNNING
    assert '"provider_status": "warming_up"' in capsys.readouterr().err
