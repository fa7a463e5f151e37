"""The DashScope emulator on its own (TestClient, fake clock), and mounted beside the OpenAI
one as `tunectl emulator` serves them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from orchestrator.providers import emulation
from orchestrator.providers.dashscope import emulator as dashscope
from orchestrator.providers.dashscope.emulator import Scenario, create_app
from orchestrator.providers.openai import emulator as openai

KEY = {"authorization": "Bearer sk-test"}
JSONL = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> Iterator[TestClient]:
    app = create_app(Scenario(job_duration_s=10, deployment_duration_s=10), clock=clock)
    with TestClient(app, headers=KEY) as client:
        yield client


def error(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def upload(client: TestClient, *names: str) -> list[str]:
    response = client.post("/api/v1/files", files=[("files", (n, JSONL)) for n in names])
    return [f["file_id"] for f in response.json()["data"]["uploaded_files"]]


def create_job(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"model": "qwen-turbo", "training_file_ids": upload(client, "t.jsonl"), **fields}
    response = client.post("/api/v1/fine-tunes", json=body)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()["output"]
    return job


def tuned(client: TestClient, clock: FakeClock) -> str:
    job = create_job(client)
    clock.advance(10)
    output: str = client.get(f"/api/v1/fine-tunes/{job['job_id']}").json()["output"][
        "finetuned_output"]
    return output


def put_scenario(client: TestClient, **fields: Any) -> None:
    scenario = Scenario(job_duration_s=10, deployment_duration_s=10, **fields)
    assert client.put("/_emulator/scenario", json=scenario.model_dump()).status_code == 200


class TestFiles:
    def test_upload_several_files_with_descriptions(self, client: TestClient) -> None:
        response = client.post("/api/v1/files", data={"descriptions": ["one", "two"]},
                               files=[("files", ("a.jsonl", JSONL)), ("files", ("b.jsonl", b"x"))])

        body = response.json()
        assert response.status_code == 200
        assert body["request_id"] == response.headers["x-request-id"]
        assert [f["name"] for f in body["data"]["uploaded_files"]] == ["a.jsonl", "b.jsonl"]
        assert body["data"]["failed_uploads"] == []
        listed = client.get("/api/v1/files").json()["data"]
        assert listed["total"] == 2 and [f["description"] for f in listed["files"]] == [
            "two", "one"]
        one = client.get(f"/api/v1/files/{listed['files'][0]['file_id']}").json()["data"]
        assert one["size"] == 1 and one["gmt_create"].count(":") == 2

    def test_a_missing_files_part_is_a_400_naming_it(self, client: TestClient) -> None:
        body = error(client.post("/api/v1/files", data={"purpose": "fine-tune"}), 400)

        assert (body["code"], body["message"]) == ("InvalidParameter", "Missing parameter: files")

    def test_a_bad_purpose_answers_in_the_openai_shape(self, client: TestClient) -> None:
        response = client.post("/api/v1/files", data={"purpose": "training"},
                               files=[("files", ("a.jsonl", JSONL))])

        assert response.status_code == 400
        assert response.json()["error"]["param"] == "purpose"

    def test_over_the_file_count_quota_lands_in_failed_uploads_with_200(
            self, client: TestClient) -> None:
        upload(client, *[f"f{i}.jsonl" for i in range(100)])

        response = client.post("/api/v1/files", files=[("files", ("late.jsonl", JSONL))])

        assert response.status_code == 200
        assert response.json()["data"] == {"uploaded_files": [], "failed_uploads": [{
            "name": "late.jsonl", "code": "BadRequest.TooMany",
            "message": "Exceeded the maximum number of files allowed (100)."}]}

    def test_delete_answers_only_a_request_id(self, client: TestClient) -> None:
        [file_id] = upload(client, "a.jsonl")

        deleted = client.delete(f"/api/v1/files/{file_id}")

        assert list(deleted.json()) == ["request_id"]
        assert error(client.get(f"/api/v1/files/{file_id}"), 404)["code"] == "NotFound"


class TestFineTunes:
    @pytest.mark.parametrize(("body", "message"), [
        pytest.param({"training_file_ids": ["x"]}, "Missing parameter: model", id="no-model"),
        pytest.param({"model": "qwen-turbo"}, "Missing training files", id="no-files"),
        pytest.param({"model": "qwen-turbo", "training_file_ids": ["nope"]},
                     "File nope not found", id="unknown-file"),
        pytest.param({"model": "gpt-4o", "training_file_ids": ["F"]},
                     "Model gpt-4o does not support fine-tuning", id="unknown-model"),
        pytest.param({"model": "qwen-turbo", "training_file_ids": ["F"],
                      "training_type": "lora"}, "training_type must be one of", id="type"),
        pytest.param({"model": "qwen-turbo", "training_file_ids": ["F"],
                      "hyper_parameters": {"n_epochs": 0}},
                     "hyper_parameters.n_epochs must be a positive integer", id="epochs"),
        pytest.param([1, 2], "The request body must be a JSON object", id="not-an-object"),
    ])
    def test_a_bad_create_is_a_400_invalid_parameter(self, client: TestClient, body: Any,
                                                     message: str) -> None:
        [file_id] = upload(client, "t.jsonl")
        if isinstance(body, dict) and body.get("training_file_ids") == ["F"]:
            body["training_file_ids"] = [file_id]

        found = error(client.post("/api/v1/fine-tunes", json=body), 400)

        assert found["code"] == "InvalidParameter"
        assert message in found["message"]

    def test_a_job_echoes_its_request_with_defaults_and_an_id_like_dashscopes(
            self, client: TestClient) -> None:
        job = create_job(client, training_type="efficient_sft", job_name="job_42",
                         hyper_parameters={"n_epochs": 3, "lora_rank": 16})

        assert job["job_id"].startswith("ft-") and len(job["job_id"]) == len(
            "ft-202410291653-1c7f")
        assert (job["status"], job["job_name"], job["training_type"]) == (
            "PENDING", "job_42", "efficient_sft")
        assert job["hyper_parameters"]["lora_rank"] == 16
        assert job["hyper_parameters"]["lora_alpha"] == 32  # LoRA default
        assert "finetuned_output" not in job

    def test_list_pages_newest_first_and_filters_by_model(self, client: TestClient) -> None:
        ids = [create_job(client)["job_id"] for _ in range(3)]

        page = client.get("/api/v1/fine-tunes", params={"page_no": 2, "page_size": 2})
        other = client.get("/api/v1/fine-tunes", params={"model": "qwen-plus"})

        assert page.json()["output"]["total"] == 3
        assert [j["job_id"] for j in page.json()["output"]["jobs"]] == [ids[0]]
        assert other.json()["output"]["jobs"] == []
        assert error(client.get("/api/v1/fine-tunes", params={"page_size": 101}), 400)[
            "code"] == "InvalidParameter"

    def test_a_scenario_failure_ends_the_job_failed_with_its_reason_in_the_log(
            self, client: TestClient, clock: FakeClock) -> None:
        put_scenario(client, fail_jobs={"code": "InternalError.Algo", "message": "diverged"})
        job = create_job(client)
        clock.advance(10)

        got = client.get(f"/api/v1/fine-tunes/{job['job_id']}").json()["output"]
        logs = client.get(f"/api/v1/fine-tunes/{job['job_id']}/logs").json()["output"]

        assert (got["status"], got["code"], got["message"]) == (
            "FAILED", "InternalError.Algo", "diverged")
        assert "end_time" in got and "finetuned_output" not in got
        assert logs["logs"][-1].endswith("training failed: InternalError.Algo: diverged")

    def test_a_cancelled_job_logs_the_cancel_and_cannot_be_cancelled_again(
            self, client: TestClient, clock: FakeClock) -> None:
        job = create_job(client)
        clock.advance(5)
        assert client.post(f"/api/v1/fine-tunes/{job['job_id']}/cancel").json()["output"] == {
            "status": "success"}
        clock.advance(1)

        logs = client.get(f"/api/v1/fine-tunes/{job['job_id']}/logs").json()["output"]["logs"]
        again = client.post(f"/api/v1/fine-tunes/{job['job_id']}/cancel")

        assert logs[-1].endswith("job cancelled")
        assert error(again, 400)["code"] == "UnsupportedOperation"


class TestDeployments:
    def test_a_deployment_goes_pending_deploying_running(self, client: TestClient,
                                                         clock: FakeClock) -> None:
        model = tuned(client, clock)
        created = client.post("/api/v1/deployments", json={"model_name": model, "capacity": 2})
        name = created.json()["output"]["deployed_model"]
        statuses = []
        for _ in range(11):
            statuses.append(client.get(f"/api/v1/deployments/{name}").json()["output"]["status"])
            clock.advance(1)

        assert [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]] == [
            "PENDING", "DEPLOYING", "RUNNING"]
        running = client.get(f"/api/v1/deployments/{name}").json()["output"]
        assert (running["ready_capacity"], running["base_model"]) == (2, "qwen-turbo")

    def test_scale_only_while_running_and_delete_goes_through_deleting(
            self, client: TestClient, clock: FakeClock) -> None:
        model = tuned(client, clock)
        name = client.post("/api/v1/deployments", json={"model_name": model, "capacity": 1}
                           ).json()["output"]["deployed_model"]
        early = client.put(f"/api/v1/deployments/{name}/scale", json={"capacity": 3})
        clock.advance(10)
        scaled = client.put(f"/api/v1/deployments/{name}/scale", json={"capacity": 3})
        deleted = client.delete(f"/api/v1/deployments/{name}")
        deleting = client.get(f"/api/v1/deployments/{name}").json()["output"]["status"]
        clock.advance(1)

        assert error(early, 400)["code"] == "UnsupportedOperation"
        assert scaled.json()["output"]["capacity"] == 3
        assert deleted.json()["output"] == {"status": "success"}
        assert deleting == "DELETING"
        assert error(client.get(f"/api/v1/deployments/{name}"), 404)["code"] == "NotFound"
        assert client.get("/_emulator/stats").json()["deployments_deleted"] == 1

    def test_the_same_suffix_twice_is_a_conflict(self, client: TestClient,
                                                 clock: FakeClock) -> None:
        model = tuned(client, clock)
        body = {"model_name": model, "capacity": 1, "suffix": "prod"}

        first = client.post("/api/v1/deployments", json=body)
        second = client.post("/api/v1/deployments", json=body)

        assert first.json()["output"]["deployed_model"] == f"{model}-prod"
        assert error(second, 409)["code"] == "Conflict"

    @pytest.mark.parametrize(("body", "message"), [
        ({"capacity": 1}, "Missing parameter: model_name"),
        ({"model_name": "qwen-turbo", "capacity": 1}, "is not a fine-tuned model"),
        ({"model_name": "M", "capacity": 0}, "capacity must be a positive integer"),
        ({"model_name": "M", "capacity": 1, "plan": "gold"}, "plan must be mu, ptu or lora"),
    ])
    def test_a_bad_deployment_is_a_400(self, client: TestClient, clock: FakeClock,
                                       body: dict[str, Any], message: str) -> None:
        if body.get("model_name") == "M":
            body["model_name"] = tuned(client, clock)

        found = error(client.post("/api/v1/deployments", json=body), 400)

        assert message in found["message"]

    def test_a_deployment_failure_knob(self, client: TestClient, clock: FakeClock) -> None:
        model = tuned(client, clock)
        put_scenario(client, fail_deployments={"code": "ResourceExhausted", "message": "full"})
        name = client.post("/api/v1/deployments", json={"model_name": model, "capacity": 1}
                           ).json()["output"]["deployed_model"]
        clock.advance(10)

        got = client.get(f"/api/v1/deployments/{name}").json()["output"]

        assert (got["status"], got["code"], got["message"]) == (
            "FAILED", "ResourceExhausted", "full")


class TestFaults:
    def test_auth_answers_in_dashscopes_shape(self, clock: FakeClock) -> None:
        with TestClient(create_app(api_key="sk-right", clock=clock)) as client:
            missing = client.get("/api/v1/files")
            wrong = client.get("/api/v1/files", headers={"authorization": "Bearer sk-wrong"})

        assert error(missing, 401) | {"request_id": ""} == {
            "code": "InvalidApiKey", "message": "No API-key provided.", "request_id": ""}
        assert error(wrong, 401)["message"] == "Invalid API-key provided."

    def test_throttling_has_a_throttling_code_and_no_retry_after(self,
                                                                 client: TestClient) -> None:
        put_scenario(client, throttle={"count": 1}, server_errors={"count": 1, "status": 503})

        throttled = client.get("/api/v1/files")
        failed = client.get("/api/v1/files")

        assert error(throttled, 429)["code"] == "Throttling.RateQuota"
        assert "retry-after" not in throttled.headers
        assert error(failed, 503)["code"] == "ServiceUnavailable"
        assert client.get("/api/v1/files").status_code == 200
        counters = client.get("/_emulator/stats").json()
        assert (counters["throttled"], counters["server_errors"]) == (1, 1)

    def test_a_byte_order_mark_goes_before_api_bodies_only(self, client: TestClient) -> None:
        put_scenario(client, utf8_bom=True)

        api = client.get("/api/v1/files")
        admin = client.get("/_emulator/stats")

        assert api.content.startswith(b"\xef\xbb\xbf{")
        assert int(api.headers["content-length"]) == len(api.content)
        assert admin.content.startswith(b"{")

    def test_an_invalid_scenario_is_a_400_and_reset_keeps_the_scenario(
            self, client: TestClient) -> None:
        bad = client.put("/_emulator/scenario", json={"deployment_duration_s": -1})
        create_job(client)
        client.post("/_emulator/reset")

        assert error(bad, 400)["message"].startswith("Invalid value for deployment_duration_s")
        assert client.get("/_emulator/stats").json()["jobs"] == 0
        assert client.get("/_emulator/scenario").json()["job_duration_s"] == 10

    def test_unknown_routes_are_a_dashscope_404(self, client: TestClient) -> None:
        assert error(client.get("/api/v1/nowhere"), 404)["code"] == "NotFound"


class TestServedTogether:
    @pytest.fixture
    def both(self, clock: FakeClock) -> Iterator[TestClient]:
        app = emulation.combined_app([
            dashscope.mount(job_duration_s=10, api_key=None),
            openai.mount(job_duration_s=10, api_key=None),
        ])
        with TestClient(app, headers=KEY) as client:
            yield client

    def test_openai_stays_at_the_root_and_dashscope_lives_under_its_prefix(
            self, both: TestClient) -> None:
        assert both.get("/v1/files").json()["object"] == "list"
        assert both.get("/dashscope/api/v1/files").json()["data"]["total"] == 0
        assert both.get("/_emulator/stats").json()["requests"] == {"GET /v1/files": 1}
        assert both.get("/dashscope/_emulator/stats").json()["requests"] == {
            "GET /api/v1/files": 1}

    def test_route_filters_match_the_path_below_the_mount(self, both: TestClient) -> None:
        scenario = Scenario(throttle={"count": 1, "routes": "^/api/v1/files$"})
        both.put("/dashscope/_emulator/scenario", json=scenario.model_dump())

        assert both.get("/v1/files").status_code == 200
        assert both.get("/dashscope/api/v1/files").status_code == 429
        assert both.get("/dashscope/api/v1/files").status_code == 200

    def test_installed_emulators_are_every_plugin_with_one(self) -> None:
        mounts = emulation.installed_emulators(job_duration_s=1, api_key=None)

        assert [(m.title, m.prefix, m.api_path) for m in mounts] == [
            ("OpenAI", "", "/v1"), ("DashScope", "/dashscope", "/api/v1"),
            ("Google (Vertex AI, Cloud Storage, OAuth)", "/google", "")]

    def test_two_emulators_at_the_root_are_refused(self) -> None:
        with pytest.raises(ValueError, match="only one emulator can be mounted at the root"):
            emulation.combined_app([openai.mount(job_duration_s=1, api_key=None),
                                    openai.mount(job_duration_s=1, api_key=None)])
