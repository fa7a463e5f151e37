"""The DashScope adapter against the in-process emulator (mounted under /dashscope as
`tunectl emulator` serves it), and against hand-written answers for what the emulator
never says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.errors import (
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from orchestrator.providers.base import (
    DeploymentRequest,
    DeploymentStatus,
    JobRequest,
    RemoteStatus,
    deployer,
)
from orchestrator.providers.dashscope.adapter import DashScopeClient
from orchestrator.providers.dashscope.emulator import Scenario
from tests.helpers import Clock, in_process_emulator, write_dataset

SHA = "cd" * 32
BASE = "http://emulator.test/dashscope/api/v1"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client(http: httpx.Client, key: str = "sk-ds-test-123456", **kw: Any) -> DashScopeClient:
    return DashScopeClient(http, base_url=BASE, api_key=key, **kw)


def request(job_id: str, file_id: str, **fields: Any) -> JobRequest:
    values: dict[str, Any] = dict(job_id=job_id, base_model="qwen-turbo", method="sft",
                                  training_file_id=file_id, validation_file_id=None,
                                  hyperparameters={"n_epochs": 2}, suffix=None, labels={})
    values.update(fields)
    return JobRequest(**values)


def scenario(**fields: Any) -> Scenario:
    return Scenario.model_validate({"job_duration_s": 10, "deployment_duration_s": 10,
                                    **fields})


def trained_model(ds: DashScopeClient, clock: Clock, tmp_path: Path) -> str:
    file_id = ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
    job = ds.create_job(request("job_a", file_id))
    clock.advance(11)
    model = ds.get_job(job.id).fine_tuned_model
    assert model is not None
    return model


class TestFiles:
    def test_an_uploaded_dataset_is_found_again_by_its_hash(self, clock: Clock,
                                                            tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http:
            ds = client(http)
            assert ds.find_file(SHA) is None
            uploaded = ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA)
            found = ds.find_file(SHA)
            exists = ds.file_exists(uploaded.id), ds.file_exists("no-such-file")
            listed = http.get("/dashscope/api/v1/files").json()["data"]["files"]

        assert found == uploaded
        assert uploaded.bytes == (tmp_path / "d.jsonl").stat().st_size
        assert exists == (True, False)
        assert listed[0]["name"] == f"tunectl-{SHA}.jsonl"
        assert listed[0]["description"] == f"tunectl dataset {SHA}"

    def test_a_file_in_failed_uploads_is_an_error_though_the_answer_is_200(
            self, clock: Clock, tmp_path: Path) -> None:
        failing = scenario(failed_uploads={"count": 1, "code": "BadRequest.TooLarge",
                                           "message": "Total file size exceeds the quota."})
        with in_process_emulator(clock, dashscope=failing) as http:
            ds = client(http)
            with pytest.raises(ProviderRejected) as error:
                ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA)

        assert error.value.status == 200
        assert str(error.value) == (f"dashscope upload file HTTP 200: tunectl-{SHA}.jsonl: "
                                    "BadRequest.TooLarge: Total file size exceeds the quota.")

    def test_a_throttled_upload_in_failed_uploads_is_retryable(self, tmp_path: Path) -> None:
        def answer(req: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"request_id": "r", "data": {
                "uploaded_files": [], "failed_uploads": [
                    {"name": "x", "code": "Throttling.RateQuota", "message": "slow down"}]}})

        with httpx.Client(transport=httpx.MockTransport(answer)) as http, pytest.raises(
                RateLimited):
            client(http).upload_file(write_dataset(tmp_path / "d.jsonl"), SHA)


class TestFineTunes:
    def test_a_created_job_is_found_by_its_job_name_across_pages(self, clock: Clock,
                                                                 tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http:
            ds = client(http)
            file_id = ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
            first = ds.create_job(request("job_first", file_id))
            for i in range(120):  # more than one page of 100 before it (newest first)
                ds.create_job(request(f"job_{i}", file_id))
            found = ds.find_job("job_first")
            missing = ds.find_job("job_zzz")
            pages = http.get("/dashscope/_emulator/stats").json()["requests"][
                "GET /api/v1/fine-tunes"]

        assert found == first and missing is None
        assert first.status is RemoteStatus.RUNNING and first.provider_status == "PENDING"
        assert pages == 4  # two pages per lookup

    def test_statuses_follow_the_job_to_its_tuned_model(self, clock: Clock,
                                                        tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http:
            ds = client(http)
            file_id = ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
            job = ds.create_job(request("job_a", file_id, suffix="bot"))
            seen = []
            for _ in range(11):
                seen.append(ds.get_job(job.id).provider_status)
                clock.advance(1)
            done = ds.get_job(job.id)

        assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == [
            "PENDING", "QUEUING", "RUNNING", "SUCCEEDED"]
        assert done.status is RemoteStatus.SUCCEEDED
        assert done.fine_tuned_model == f"qwen-turbo-bot-{job.id}"
        assert done.result["usage"] > 0 and done.result["training_type"] == "sft"

    def test_cancel_goes_through_canceling_and_a_second_cancel_is_refused(
            self, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http:
            ds = client(http)
            file_id = ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
            job = ds.create_job(request("job_a", file_id))
            clock.advance(3)
            cancelling = ds.cancel_job(job.id)
            with pytest.raises(ProviderRejected, match="UnsupportedOperation"):
                ds.cancel_job(job.id)
            clock.advance(2)
            cancelled = ds.get_job(job.id)

        assert (cancelling.status, cancelling.provider_status) == (RemoteStatus.CANCELLING,
                                                                   "CANCELING")
        assert (cancelled.status, cancelled.provider_status) == (RemoteStatus.CANCELLED,
                                                                 "CANCELED")

    def test_delete_refuses_a_running_job_and_removes_an_ended_one(self, clock: Clock,
                                                                   tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http:
            ds = client(http)
            file_id = ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
            job = ds.create_job(request("job_a", file_id))
            with pytest.raises(ProviderRejected, match="cancel it before deleting it"):
                ds.delete_job(job.id)
            clock.advance(11)
            ds.delete_job(job.id)
            with pytest.raises(ProviderRejected) as gone:
                ds.get_job(job.id)

        assert gone.value.status == 404

    def test_logs_page_by_offset_and_events_are_the_newest_lines(self, clock: Clock,
                                                                 tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http:
            ds = client(http)
            file_id = ds.upload_file(write_dataset(tmp_path / "d.jsonl"), SHA).id
            job = ds.create_job(request("job_a", file_id))
            clock.advance(11)
            total, everything = ds.logs(job.id)
            _, middle = ds.logs(job.id, offset=1, line=2)
            events = ds.list_events(job.id, limit=2)

        assert total == len(everything) == 6
        assert middle == everything[1:3]
        assert [e.message for e in events] == everything[-2:]
        assert everything[-1].endswith("##FT_COMPLETE##")

    def test_a_failed_job_without_a_message_is_explained_by_its_log(self) -> None:
        def answer(req: httpx.Request) -> httpx.Response:
            if req.url.path.endswith("/logs"):
                offset = int(req.url.params["offset"])
                lines = ["created", "training", "CUDA out of memory at step 12"]
                return httpx.Response(200, json={"request_id": "r", "output": {
                    "total": 3, "logs": lines[offset:offset + int(req.url.params["line"])]}})
            return httpx.Response(200, json={"request_id": "r", "output": {
                "job_id": "ft-1", "status": "FAILED"}})

        with httpx.Client(transport=httpx.MockTransport(answer)) as http:
            job = client(http).get_job("ft-1")

        assert job.error == "created | training | CUDA out of memory at step 12"


class TestDeployments:
    def test_create_find_scale_and_delete(self, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http:
            ds = deployer(client(http))
            model = trained_model(client(http), clock, tmp_path)
            assert ds.find_deployment(model) is None
            created = ds.create_deployment(DeploymentRequest("job_a", model, 2))
            found = ds.find_deployment(model)
            clock.advance(11)
            serving = ds.get_deployment(created.id)
            scaled = ds.scale_deployment(created.id, 4)
            listed = ds.list_deployments()
            ds.delete_deployment(created.id)
            deleting = ds.get_deployment(created.id)
            after_delete = ds.find_deployment(model)
            clock.advance(2)
            gone = ds.get_deployment(created.id)
            ds.delete_deployment(created.id)  # gone already: not an error

        assert (created.status, created.provider_status, created.capacity) == (
            DeploymentStatus.STARTING, "PENDING", 2)
        assert found == created
        assert serving is not None and serving.status is DeploymentStatus.SERVING
        assert scaled.capacity == 4 and [d.id for d in listed] == [created.id]
        assert deleting is not None and deleting.status is DeploymentStatus.GONE
        assert after_delete is None and gone is None

    def test_a_failed_deployment_is_not_found_again_and_says_why(self, clock: Clock,
                                                                 tmp_path: Path) -> None:
        failing = scenario(fail_deployments={"code": "ResourceExhausted",
                                             "message": "no capacity"})
        with in_process_emulator(clock, dashscope=failing) as http:
            ds = deployer(client(http))
            model = trained_model(client(http), clock, tmp_path)
            created = ds.create_deployment(DeploymentRequest("job_a", model, 1))
            clock.advance(11)
            failed = ds.get_deployment(created.id)
            again = ds.find_deployment(model)

        assert failed is not None and failed.status is DeploymentStatus.FAILED
        assert failed.error == "ResourceExhausted: no capacity"
        assert again is None

    def test_deploying_something_that_is_not_a_tuned_model_is_rejected(
            self, clock: Clock) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as http, pytest.raises(
                ProviderRejected, match="InvalidParameter: Model qwen-turbo is not a "
                "fine-tuned model"):
            deployer(client(http)).create_deployment(DeploymentRequest("j", "qwen-turbo", 1))


class TestTransport:
    def test_every_call_copes_with_a_byte_order_mark(self, clock: Clock,
                                                     tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario(utf8_bom=True)) as http:
            raw = http.get("/dashscope/api/v1/files").content
            model = trained_model(client(http), clock, tmp_path)
            with pytest.raises(ProviderRejected, match="NotFound"):
                client(http).get_job("ft-missing")

        assert raw.startswith(b"\xef\xbb\xbf")
        assert model.startswith("qwen-turbo-")

    def test_throttling_and_server_errors_are_retryable(self, clock: Clock) -> None:
        noisy = scenario(throttle={"count": 1}, server_errors={"count": 1, "status": 502})
        with in_process_emulator(clock, dashscope=noisy) as http:
            ds = client(http)
            with pytest.raises(RateLimited, match=r"HTTP 429: Throttling.RateQuota"):
                ds.find_file(SHA)
            with pytest.raises(ProviderUnavailable, match=r"HTTP 502: BadGateway"):
                ds.find_file(SHA)
            assert ds.find_file(SHA) is None

    def test_a_wrong_key_is_a_permanent_auth_error(self, clock: Clock) -> None:
        from fastapi.testclient import TestClient

        from orchestrator.providers.dashscope.emulator import create_app

        with TestClient(create_app(api_key="sk-right"), base_url="http://emulator.test") as http:
            ds = DashScopeClient(http, base_url="http://emulator.test/api/v1", api_key="sk-no")
            with pytest.raises(ProviderAuthError, match="InvalidApiKey: Invalid API-key"):
                ds.find_file(SHA)

    def test_the_workspace_header_and_the_account(self) -> None:
        seen: list[httpx.Headers] = []

        def answer(req: httpx.Request) -> httpx.Response:
            seen.append(req.headers)
            return httpx.Response(200, json={"request_id": "r", "data": {"files": []}})

        with httpx.Client(transport=httpx.MockTransport(answer)) as http:
            a = client(http, workspace="ws-1")
            b = client(http, workspace="ws-2")
            a.find_file(SHA)

        assert seen[0]["x-dashscope-workspace"] == "ws-1"
        assert seen[0]["authorization"] == "Bearer sk-ds-test-123456"
        assert a.account != b.account and len(a.account) == 16

    def test_an_answer_that_is_not_json_is_retryable(self) -> None:
        with httpx.Client(transport=httpx.MockTransport(
                lambda req: httpx.Response(200, text="<html>"))) as http, pytest.raises(
                ProviderUnavailable, match="not JSON"):
            client(http).find_file(SHA)

    def test_the_job_body_the_emulator_receives(self, clock: Clock, tmp_path: Path) -> None:
        bodies: list[dict[str, Any]] = []

        def answer(req: httpx.Request) -> httpx.Response:
            bodies.append(json.loads(req.content))
            return httpx.Response(200, json={"request_id": "r", "output": {
                "job_id": "ft-1", "status": "PENDING"}})

        with httpx.Client(transport=httpx.MockTransport(answer)) as http:
            client(http).create_job(request("job_z", "f-1", training_type="efficient_sft"))

        assert bodies[0]["job_name"] == "job_z"
        assert bodies[0]["training_type"] == "efficient_sft"
