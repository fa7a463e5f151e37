"""The OpenAI emulator in-process: routes, job lifecycle on a fake clock, errors, scenario knobs.

Every JSON body is checked against the vendored spec schema of its route.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrator.providers.openai import emulator, spec_schemas
from orchestrator.providers.openai.emulator import Scenario, create_app

T0 = 1_700_000_000.0
KEY = {"Authorization": "Bearer sk-unit"}
TRAINING = b"".join(b'{"messages": [{"role": "user", "content": "hi %d"}]}\n' % i
                    for i in range(20))


class Response(Protocol):
    """What the helpers read from a TestClient response (httpx or httpx2)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> Iterator[TestClient]:
    with TestClient(create_app(Scenario(job_duration_s=10), clock=clock), headers=KEY) as client:
        yield client


def ok(response: Response, schema: str) -> Any:
    """The body of a 200 response, after checking it against the spec schema `schema`."""
    assert response.status_code == 200, response.text
    assert spec_schemas.validate(schema, response.json()) == []
    return response.json()


def api_error(response: Response, status: int) -> dict[str, Any]:
    """The `error` object of an error response, after checking its shape and status."""
    assert response.status_code == status, response.text
    assert spec_schemas.validate("ErrorResponse", response.json()) == []
    error: dict[str, Any] = response.json()["error"]
    return error


def upload(client: TestClient, content: bytes = TRAINING, *, name: str = "train.jsonl",
           purpose: str = "fine-tune", form: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.post("/v1/files", files={"file": (name, content)},
                           data={"purpose": purpose, **(form or {})})
    file: dict[str, Any] = ok(response, "OpenAIFile")
    return file


def create_job(client: TestClient, **fields: Any) -> dict[str, Any]:
    if "training_file" not in fields:
        fields["training_file"] = upload(client)["id"]
    job: dict[str, Any] = ok(client.post("/v1/fine_tuning/jobs",
                                         json={"model": "gpt-4o-mini", **fields}),
                             "FineTuningJob")
    return job


def get_job(client: TestClient, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = ok(client.get(f"/v1/fine_tuning/jobs/{job_id}"), "FineTuningJob")
    return job


def events(client: TestClient, job_id: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = ok(client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                                         params=params), "ListFineTuningJobEventsResponse")
    return body


def checkpoints(client: TestClient, job_id: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = ok(client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
                                         params=params), "ListFineTuningJobCheckpointsResponse")
    return body


def put_scenario(client: TestClient, **fields: Any) -> None:
    assert client.put("/_emulator/scenario", json=fields).status_code == 200


class TestVendoredSpec:
    def test_openapi_3_0_keywords_are_rewritten(self) -> None:
        """Values the raw 3.0 keywords would wrongly reject pass; real violations still fail."""
        valid = {"model": "m", "training_file": "f", "suffix": None, "seed": None,
                 "validation_file": None, "hyperparameters": {"learning_rate_multiplier": 1.0},
                 "integrations": None}
        dpo = {"model": "m", "training_file": "f",
               "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}}

        assert spec_schemas.validate("CreateFineTuningJobRequest", valid) == []
        assert spec_schemas.validate("CreateFineTuningJobRequest", dpo) == []
        zero_rate = {**valid, "hyperparameters": {"learning_rate_multiplier": 0}}
        assert spec_schemas.validate("CreateFineTuningJobRequest", zero_rate) == [
            "$.hyperparameters.learning_rate_multiplier: 0 is less than or equal to the "
            "minimum of 0"]

    def test_schema_is_self_contained(self) -> None:
        schema = spec_schemas.schema("FineTuningJob")

        assert schema["$ref"] == "#/$defs/FineTuningJob"
        assert "FineTuneMethod" in schema["$defs"]
        assert "nullable" not in str(schema)

    def test_normalizer_rewrites_nullable_exclusive_minimum_and_refs(self) -> None:
        path = Path(__file__).parents[4] / "tools" / "extract_openai_spec.py"
        spec = importlib.util.spec_from_file_location("extract_openai_spec", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

        raw = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True,
               "items": {"$ref": "#/components/schemas/X"}}
        assert module.normalize(raw) == {"anyOf": [
            {"type": "number", "exclusiveMinimum": 0, "items": {"$ref": "#/$defs/X"}},
            {"type": "null"}]}


class TestFiles:
    def test_upload_returns_a_processed_file_object(self, client: TestClient) -> None:
        file = upload(client)

        assert re.fullmatch(r"file-[A-Za-z0-9]{24}", file["id"])
        assert file | {"id": None} == {
            "id": None, "object": "file", "bytes": len(TRAINING), "created_at": int(T0),
            "expires_at": None, "filename": "train.jsonl", "purpose": "fine-tune",
            "status": "processed", "status_details": None}

    def test_retrieve_content_and_delete(self, client: TestClient) -> None:
        file = upload(client)

        assert ok(client.get(f"/v1/files/{file['id']}"), "OpenAIFile") == file
        assert client.get(f"/v1/files/{file['id']}/content").content == TRAINING
        assert ok(client.delete(f"/v1/files/{file['id']}"), "DeleteFileResponse") == {
            "id": file["id"], "object": "file", "deleted": True}
        assert api_error(client.get(f"/v1/files/{file['id']}"), 404)["param"] == "id"

    def test_expires_after_sets_expires_at_and_the_file_goes_away(
            self, client: TestClient, clock: FakeClock) -> None:
        file = upload(client, form={"expires_after[anchor]": "created_at",
                                    "expires_after[seconds]": "3600"})

        assert file["expires_at"] == int(T0) + 3600
        clock.advance(3600)
        api_error(client.get(f"/v1/files/{file['id']}"), 404)

    def test_batch_files_expire_after_30_days_by_default(self, client: TestClient) -> None:
        file = upload(client, name="batch.jsonl", purpose="batch")

        assert file["expires_at"] == int(T0) + 30 * 24 * 3600

    def test_list_pages_newest_first_by_default(self, client: TestClient,
                                                clock: FakeClock) -> None:
        ids = []
        for _ in range(5):
            ids.append(upload(client)["id"])
            clock.advance(1)

        first = ok(client.get("/v1/files", params={"limit": 2}), "ListFilesResponse")
        second = ok(client.get("/v1/files", params={"limit": 2, "after": first["last_id"]}),
                    "ListFilesResponse")
        last = ok(client.get("/v1/files", params={"limit": 2, "after": second["last_id"]}),
                  "ListFilesResponse")

        assert [f["id"] for f in first["data"] + second["data"] + last["data"]] == ids[::-1]
        assert (first["first_id"], first["last_id"]) == (ids[4], ids[3])
        assert (first["has_more"], second["has_more"], last["has_more"]) == (True, True, False)

    def test_list_ascending_and_by_purpose(self, client: TestClient) -> None:
        tuning = [upload(client)["id"], upload(client)["id"]]
        upload(client, name="b.jsonl", purpose="batch")

        body = ok(client.get("/v1/files", params={"order": "asc", "purpose": "fine-tune"}),
                  "ListFilesResponse")

        assert [f["id"] for f in body["data"]] == tuning

    def test_empty_list_has_null_ids(self, client: TestClient) -> None:
        body = ok(client.get("/v1/files"), "ListFilesResponse")

        assert body == {"object": "list", "data": [], "first_id": None, "last_id": None,
                        "has_more": False}

    @pytest.mark.parametrize(
        ("name", "form", "param"),
        [
            pytest.param("t.jsonl", {"purpose": "training"}, "purpose", id="unknown-purpose"),
            pytest.param("t.csv", {"purpose": "fine-tune"}, "file", id="fine-tune-not-jsonl"),
            pytest.param("t.jsonl", {"purpose": "fine-tune", "expires_after[anchor]": "created_at",
                                     "expires_after[seconds]": "60"}, "expires_after",
                         id="expiry-under-an-hour"),
            pytest.param("t.jsonl", {}, "purpose", id="purpose-missing"),
        ],
    )
    def test_bad_upload_is_a_400_naming_the_field(self, client: TestClient, name: str,
                                                  form: dict[str, str], param: str) -> None:
        response = client.post("/v1/files", files={"file": (name, b"{}\n")}, data=form)

        error = api_error(response, 400)
        assert (error["type"], error["param"]) == ("invalid_request_error", param)

    def test_missing_file_part_is_a_400(self, client: TestClient) -> None:
        response = client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"other": ("x", b"")})

        assert api_error(response, 400)["param"] == "file"

    def test_files_over_the_size_limit_are_rejected(self, client: TestClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(emulator, "MAX_FILE_BYTES", 100)
        response = client.post("/v1/files", files={"file": ("t.jsonl", b"x" * 101)},
                               data={"purpose": "fine-tune"})

        assert api_error(response, 400)["param"] == "file"
        assert ok(client.get("/v1/files"), "ListFilesResponse")["data"] == []


class TestJobLifecycle:
    def test_statuses_follow_the_clock(self, client: TestClient, clock: FakeClock) -> None:
        job = create_job(client, suffix="my-model", metadata={"team": "ml"})
        seen = {}
        for t in (0, 1, 2, 5, 10):
            clock.now = T0 + t
            seen[t] = get_job(client, job["id"])

        assert re.fullmatch(r"ftjob-[A-Za-z0-9]{24}", job["id"])
        assert [seen[t]["status"] for t in seen] == [
            "validating_files", "queued", "running", "running", "succeeded"]
        assert job["hyperparameters"] == {"batch_size": "auto", "learning_rate_multiplier": "auto",
                                          "n_epochs": "auto"}
        assert seen[2]["hyperparameters"] == {"batch_size": 1, "learning_rate_multiplier": 1.8,
                                              "n_epochs": 3}
        assert seen[2]["method"] == {"type": "supervised",
                                     "supervised": {"hyperparameters": seen[2]["hyperparameters"]}}
        assert [seen[t]["estimated_finish"] for t in seen] == [None, None, T0 + 10, T0 + 10, None]
        assert seen[5]["fine_tuned_model"] is None and seen[5]["trained_tokens"] is None
        done = seen[10]
        assert re.fullmatch(r"ft:gpt-4o-mini:emulator:my-model:[A-Za-z0-9]{8}",
                            done["fine_tuned_model"])
        assert (done["finished_at"], done["error"], done["metadata"]) == (
            T0 + 10, None, {"team": "ml"})
        assert done["trained_tokens"] == len(TRAINING) // 4 * 3
        assert done["organization_id"] == "org-emulator"

    def test_success_leaves_a_results_file(self, client: TestClient, clock: FakeClock) -> None:
        job = create_job(client)
        clock.advance(10)

        (result_id,) = get_job(client, job["id"])["result_files"]
        result = ok(client.get(f"/v1/files/{result_id}"), "OpenAIFile")
        assert result["purpose"] == "fine-tune-results"
        assert client.get(f"/v1/files/{result_id}/content").text.startswith("step,train_loss")

    def test_without_suffix_the_model_name_has_an_empty_segment(
            self, client: TestClient, clock: FakeClock) -> None:
        job = create_job(client)
        clock.advance(10)

        assert re.fullmatch(r"ft:gpt-4o-mini:emulator::[A-Za-z0-9]{8}",
                            get_job(client, job["id"])["fine_tuned_model"])

    def test_zero_duration_succeeds_on_the_first_read(self, clock: FakeClock) -> None:
        with TestClient(create_app(Scenario(job_duration_s=0), clock=clock), headers=KEY) as client:
            job = create_job(client)

            assert job["status"] == "validating_files"
            assert get_job(client, job["id"])["status"] == "succeeded"

    def test_seed_is_echoed_or_generated(self, client: TestClient) -> None:
        assert create_job(client, seed=42)["seed"] == 42
        assert isinstance(create_job(client)["seed"], int)

    def test_scenario_failure_ends_the_job_failed(self, clock: FakeClock) -> None:
        failure = {"code": "invalid_training_file", "message": "Bad line 3",
                   "param": "training_file"}
        app = create_app(Scenario(job_duration_s=10, fail_jobs=failure), clock=clock)
        with TestClient(app, headers=KEY) as client:
            job = create_job(client)
            clock.advance(9.5)
            assert get_job(client, job["id"])["status"] == "running"
            clock.advance(0.5)
            failed = get_job(client, job["id"])

            assert (failed["status"], failed["error"]) == ("failed", failure)
            assert failed["fine_tuned_model"] is None and failed["result_files"] == []
            assert failed["finished_at"] == T0 + 10
            newest = events(client, job["id"])["data"][0]
            assert (newest["level"], newest["message"]) == ("error",
                                                            "Fine-tuning job failed: Bad line 3")

    def test_metadata_overrides_duration_and_failure(self, client: TestClient,
                                                     clock: FakeClock) -> None:
        quick = create_job(client, metadata={"emulator_duration_s": "2"})
        doomed = create_job(client, metadata={"emulator_fail": "quota_exceeded"})
        clock.advance(2)

        assert get_job(client, quick["id"])["status"] == "succeeded"
        assert get_job(client, doomed["id"])["status"] == "running"
        clock.advance(8)
        assert get_job(client, doomed["id"])["error"] == {
            "code": "quota_exceeded", "message": "Emulated failure: quota_exceeded",
            "param": None}

    def test_pause_stops_the_clock_and_resume_requeues(self, client: TestClient,
                                                       clock: FakeClock) -> None:
        job = create_job(client)
        clock.advance(3)
        paused = ok(client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause"), "FineTuningJob")
        clock.advance(1000)
        still = get_job(client, job["id"])
        resumed = ok(client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume"), "FineTuningJob")
        clock.advance(1)
        running = get_job(client, job["id"])
        clock.advance(6.5)
        almost = get_job(client, job["id"])
        clock.advance(0.5)
        done = get_job(client, job["id"])

        assert [j["status"] for j in (paused, still, resumed, running, almost, done)] == [
            "paused", "paused", "queued", "running", "running", "succeeded"]
        assert paused["estimated_finish"] is None
        assert running["estimated_finish"] == T0 + 3 + 1000 + 1 + 7
        assert done["finished_at"] == int(T0 + 3 + 1000 + 1 + 7)

    def test_pause_and_resume_refuse_the_wrong_state(self, client: TestClient,
                                                     clock: FakeClock) -> None:
        job = create_job(client)

        api_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume"), 400)
        clock.advance(10)
        api_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause"), 400)

    def test_cancel_is_final(self, client: TestClient, clock: FakeClock) -> None:
        job = create_job(client)
        clock.advance(5)
        cancelled = ok(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), "FineTuningJob")
        clock.advance(100)

        assert (cancelled["status"], cancelled["finished_at"]) == ("cancelled", T0 + 5)
        assert get_job(client, job["id"])["status"] == "cancelled"
        error = api_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 400)
        assert error["type"] == "invalid_request_error"

    def test_dpo_method_is_echoed_with_auto_resolved(self, client: TestClient,
                                                     clock: FakeClock) -> None:
        method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}}
        job = create_job(client, method=method)
        clock.advance(2)

        assert job["method"]["dpo"]["hyperparameters"] == {
            "batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 2, "beta": 0.2}
        assert get_job(client, job["id"])["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
            "batch_size": 1, "learning_rate_multiplier": 1.8, "n_epochs": 2, "beta": 0.2}}}

    def test_legacy_hyperparameters_become_a_supervised_method(
            self, client: TestClient, clock: FakeClock) -> None:
        job = create_job(client, hyperparameters={"n_epochs": 2})
        clock.advance(10)

        assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
        assert len(checkpoints(client, job["id"])["data"]) == 2


class TestEventsAndCheckpoints:
    def test_events_appear_as_the_job_progresses(self, client: TestClient,
                                                 clock: FakeClock) -> None:
        job = create_job(client)
        before = [e["message"] for e in events(client, job["id"])["data"]]
        clock.advance(10)
        after = events(client, job["id"], limit=100)["data"]

        assert before == ["Validating training file: " + job["training_file"],
                          f"Created fine-tuning job: {job['id']}"]
        assert [e["message"] for e in after[::-1]] == [
            f"Created fine-tuning job: {job['id']}",
            "Validating training file: " + job["training_file"],
            "Files validated, moving job to queued state",
            "Fine-tuning job started",
            "Step 20/60: training loss=1.2000",
            "Step 40/60: training loss=0.8000",
            "Step 60/60: training loss=0.4000",
            f"New fine-tuned model created: {get_job(client, job['id'])['fine_tuned_model']}",
            "The job has successfully completed",
        ]
        metrics = [e for e in after if e["type"] == "metrics"]
        assert metrics[0]["data"] | {"train_mean_token_accuracy": None} == {
            "step": 60, "total_steps": 60, "train_loss": 0.4, "train_mean_token_accuracy": None}
        assert [e["created_at"] for e in after[::-1]] == [T0, T0, T0 + 1, T0 + 2, int(T0 + 4.666),
                                                          int(T0 + 7.333), T0 + 10, T0 + 10,
                                                          T0 + 10]
        assert {e["level"] for e in after} == {"info"}

    def test_events_page_with_after_and_limit(self, client: TestClient,
                                              clock: FakeClock) -> None:
        job = create_job(client)
        clock.advance(10)
        everything = events(client, job["id"], limit=100)["data"]

        first = events(client, job["id"], limit=4)
        rest = events(client, job["id"], limit=100, after=first["data"][-1]["id"])
        default = events(client, job["id"])

        assert first["has_more"] and not rest["has_more"]
        assert first["data"] + rest["data"] == everything
        assert len(default["data"]) == min(20, len(everything))

    def test_checkpoints_one_per_epoch_newest_first(self, client: TestClient,
                                                    clock: FakeClock) -> None:
        validation = upload(client)["id"]
        job = create_job(client, validation_file=validation, suffix="s")
        clock.advance(10)
        model = get_job(client, job["id"])["fine_tuned_model"]

        body = checkpoints(client, job["id"])
        assert [c["step_number"] for c in body["data"]] == [60, 40, 20]
        assert (body["first_id"], body["last_id"]) == (body["data"][0]["id"],
                                                       body["data"][-1]["id"])
        assert body["data"][0]["fine_tuned_model_checkpoint"] == f"{model}:ckpt-step-60"
        assert re.fullmatch(r"ftckpt_[A-Za-z0-9]{24}", body["data"][0]["id"])
        assert set(body["data"][0]["metrics"]) == {
            "step", "train_loss", "train_mean_token_accuracy", "valid_loss",
            "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"}
        second = checkpoints(client, job["id"], limit=2, after=body["data"][0]["id"])
        assert [c["step_number"] for c in second["data"]] == [40, 20]
        assert not second["has_more"]

    def test_no_checkpoints_before_training(self, client: TestClient) -> None:
        body = checkpoints(client, create_job(client)["id"])

        assert body == {"object": "list", "data": [], "first_id": None, "last_id": None,
                        "has_more": False}


class TestJobList:
    def list_jobs(self, client: TestClient, params: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = ok(client.get("/v1/fine_tuning/jobs", params=params),
                                  "ListPaginatedFineTuningJobsResponse")
        return body

    def test_pages_newest_first(self, client: TestClient) -> None:
        file = upload(client)["id"]
        ids = [create_job(client, training_file=file)["id"] for _ in range(25)]

        default = self.list_jobs(client)
        rest = self.list_jobs(client, {"after": default["data"][-1]["id"]})

        assert [j["id"] for j in default["data"] + rest["data"]] == ids[::-1]
        assert (len(default["data"]), default["has_more"], rest["has_more"]) == (20, True, False)
        assert set(default) == {"object", "data", "has_more"}

    def test_metadata_filters(self, client: TestClient) -> None:
        file = upload(client)["id"]
        a = create_job(client, training_file=file, metadata={"run": "a", "team": "x"})["id"]
        b = create_job(client, training_file=file, metadata={"run": "b", "team": "x"})["id"]
        empty = create_job(client, training_file=file, metadata={"run": ""})["id"]
        bare = create_job(client, training_file=file)["id"]

        def ids(query: str) -> list[str]:
            return [j["id"] for j in self.list_jobs(client, httpx.QueryParams(query))["data"]]

        assert ids("metadata[run]=a") == [a]
        assert ids("metadata[team]=x") == [b, a]
        assert ids("metadata[team]=x&metadata[run]=b") == [b]
        assert ids("metadata[run]=") == [empty]
        assert ids("metadata=null") == [bare]
        assert ids("metadata[run]=zzz") == []

    def test_combining_metadata_forms_is_a_400(self, client: TestClient) -> None:
        response = client.get("/v1/fine_tuning/jobs", params="metadata=null&metadata[a]=b")

        assert api_error(response, 400)["param"] == "metadata"


class TestCreateJobErrors:
    @pytest.mark.parametrize(
        ("fields", "param"),
        [
            pytest.param({"training_file": None}, "training_file", id="training-file-missing"),
            pytest.param({"training_file": "file-nope"}, "training_file",
                         id="training-file-unknown"),
            pytest.param({"validation_file": "file-nope"}, "validation_file",
                         id="validation-file-unknown"),
            pytest.param({"suffix": "x" * 65}, "suffix", id="suffix-over-64"),
            pytest.param({"seed": -1}, "seed", id="negative-seed"),
            pytest.param({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs",
                         id="zero-epochs"),
            pytest.param({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
                         "method.dpo.hyperparameters.beta", id="dpo-beta-zero"),
            pytest.param({"method": {"type": "supervised", "dpo": {}}}, "method.dpo",
                         id="method-section-of-another-type"),
            pytest.param({"method": {"type": "reinforcement"}}, "method.reinforcement.grader",
                         id="reinforcement-without-grader"),
            pytest.param({"method": {"type": "supervised"}, "hyperparameters": {}},
                         "hyperparameters", id="method-and-legacy-hyperparameters"),
            pytest.param({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata",
                         id="17-metadata-pairs"),
            pytest.param({"metadata": {"k" * 65: "v"}}, "metadata", id="metadata-key-over-64"),
            pytest.param({"metadata": {"k": "v" * 513}}, "metadata", id="metadata-value-over-512"),
            pytest.param({"metadata": {"k": 1}}, "metadata.k", id="metadata-value-not-string"),
            pytest.param({"metadata": {"emulator_duration_s": "soon"}}, "metadata",
                         id="bad-duration-override"),
            pytest.param({"learning_rate": 0.1}, "learning_rate", id="unknown-argument"),
        ],
    )
    def test_is_a_400_naming_the_field(self, client: TestClient, fields: dict[str, Any],
                                       param: str) -> None:
        body = {"model": "gpt-4o-mini", "training_file": upload(client)["id"], **fields}
        body = {key: value for key, value in body.items() if value is not None}

        error = api_error(client.post("/v1/fine_tuning/jobs", json=body), 400)

        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        assert self.job_count(client) == 0

    def job_count(self, client: TestClient) -> int:
        count: int = client.get("/_emulator/stats").json()["jobs"]
        return count

    def test_training_file_must_be_for_fine_tuning(self, client: TestClient) -> None:
        batch = upload(client, name="b.jsonl", purpose="batch")["id"]

        response = client.post("/v1/fine_tuning/jobs",
                               json={"model": "gpt-4o-mini", "training_file": batch})

        error = api_error(response, 400)
        assert error["param"] == "training_file" and "purpose" in error["message"]

    def test_body_that_is_not_json_is_a_400(self, client: TestClient) -> None:
        response = client.post("/v1/fine_tuning/jobs", content=b"{nope",
                               headers={"content-type": "application/json"})

        assert "parse the JSON body" in api_error(response, 400)["message"]

    def test_values_the_raw_spec_would_misread_are_accepted(self, client: TestClient) -> None:
        job = create_job(client, suffix=None, seed=None, validation_file=None,
                         hyperparameters={"learning_rate_multiplier": 1.0})

        assert job["method"]["supervised"]["hyperparameters"]["learning_rate_multiplier"] == 1.0


class TestHttpErrors:
    def test_missing_bearer_is_a_401(self, client: TestClient) -> None:
        error = api_error(client.get("/v1/files", headers={"Authorization": ""}), 401)

        assert error["type"] == "invalid_request_error"

    def test_any_key_is_accepted_when_none_is_configured(self, client: TestClient) -> None:
        response = client.get("/v1/files", headers={"Authorization": "Bearer whatever"})

        assert response.status_code == 200

    def test_wrong_key_is_a_401_that_does_not_echo_it(self, clock: FakeClock) -> None:
        app = create_app(api_key="sk-right-key-0000", clock=clock)
        with TestClient(app) as client:
            wrong = client.get("/v1/files", headers={"Authorization": "Bearer sk-wrong-key-1234"})
            right = client.get("/v1/files", headers={"Authorization": "Bearer sk-right-key-0000"})

        error = api_error(wrong, 401)
        assert error["code"] == "invalid_api_key" and "sk-wrong" not in error["message"]
        assert right.status_code == 200

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/fine_tuning/jobs/ftjob-nope"),
            ("POST", "/v1/fine_tuning/jobs/ftjob-nope/cancel"),
            ("POST", "/v1/fine_tuning/jobs/ftjob-nope/pause"),
            ("POST", "/v1/fine_tuning/jobs/ftjob-nope/resume"),
            ("GET", "/v1/fine_tuning/jobs/ftjob-nope/events"),
            ("GET", "/v1/fine_tuning/jobs/ftjob-nope/checkpoints"),
            ("GET", "/v1/files/file-nope"),
            ("DELETE", "/v1/files/file-nope"),
            ("GET", "/v1/files/file-nope/content"),
        ],
    )
    def test_unknown_ids_are_a_404(self, client: TestClient, method: str, path: str) -> None:
        error = api_error(client.request(method, path), 404)

        assert error["type"] == "invalid_request_error" and "nope" in error["message"]

    @pytest.mark.parametrize(
        ("method", "path", "status"),
        [
            pytest.param("GET", "/v1/models", 404, id="unknown-route"),
            pytest.param("PATCH", "/v1/files", 405, id="wrong-method"),
        ],
    )
    def test_routing_errors_use_the_openai_shape(self, client: TestClient, method: str,
                                                 path: str, status: int) -> None:
        error = api_error(client.request(method, path), status)

        assert error["message"] == f"Invalid URL ({method} {path})"

    def test_bad_query_parameter_is_a_400_not_a_422(self, client: TestClient) -> None:
        response = client.get("/v1/fine_tuning/jobs", params={"limit": "many"})

        assert "detail" not in response.json()
        assert api_error(response, 400)["param"] == "limit"

    def test_unknown_pagination_cursor_is_a_400(self, client: TestClient) -> None:
        response = client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"})

        assert api_error(response, 400)["param"] == "after"

    @pytest.mark.parametrize("path", ["/v1/files", "/v1/nowhere", "/_emulator/stats"])
    def test_every_response_has_a_request_id(self, client: TestClient, path: str) -> None:
        assert re.fullmatch(r"req_[0-9a-f]{32}", client.get(path).headers["x-request-id"])


class TestScenarioKnobs:
    def test_throttle_answers_429_with_retry_headers_then_recovers(
            self, client: TestClient) -> None:
        put_scenario(client, throttle={"count": 2, "retry_after_s": 1.5, "routes": "^/v1/files$"})

        limited = [client.get("/v1/files") for _ in range(2)]
        other = client.get("/v1/fine_tuning/jobs")
        after = client.get("/v1/files")

        for response in limited:
            error = api_error(response, 429)
            assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
            assert response.headers["retry-after-ms"] == "1500"
            assert response.headers["retry-after"] == "2"
            assert response.headers["x-ratelimit-remaining-requests"] == "0"
            assert response.headers["x-ratelimit-reset-requests"] == "1.5s"
        assert other.status_code == 200 and after.status_code == 200
        assert client.get("/_emulator/scenario").json()["throttle"]["count"] == 0
        assert client.get("/_emulator/stats").json()["throttled"] == 2

    def test_throttle_can_target_one_method(self, client: TestClient) -> None:
        put_scenario(client, throttle={"count": 1, "methods": ["POST"]})

        assert client.get("/v1/files").status_code == 200
        assert client.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")},
                           data={"purpose": "fine-tune"}).status_code == 429

    def test_unauthenticated_requests_do_not_use_up_faults(self, client: TestClient) -> None:
        put_scenario(client, throttle={"count": 1})

        assert client.get("/v1/files", headers={"Authorization": ""}).status_code == 401
        assert client.get("/v1/files").status_code == 429

    @pytest.mark.parametrize("status", [500, 502, 503])
    def test_server_errors(self, client: TestClient, status: int) -> None:
        put_scenario(client, server_errors={"count": 1, "status": status})

        error = api_error(client.post("/v1/fine_tuning/jobs", json={}), status)

        assert error["type"] == "server_error"
        assert client.get("/v1/files").status_code == 200

    def test_throttled_request_has_no_side_effect(self, client: TestClient) -> None:
        put_scenario(client, throttle={"count": 1})

        client.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")},
                    data={"purpose": "fine-tune"})

        assert client.get("/_emulator/stats").json()["files"] == 0

    def test_latency_delays_the_response(self, client: TestClient) -> None:
        put_scenario(client, latency={"seconds": 0.05, "routes": "^/v1/files$"})

        started = time.monotonic()
        upload(client)

        assert time.monotonic() - started >= 0.05

    def test_latency_holds_after_processing(self, clock: FakeClock) -> None:
        """A client that gives up while the response is held still created the file."""
        app = create_app(Scenario(latency={"seconds": 30, "routes": "^/v1/files$"}), clock=clock)

        async def give_up_mid_upload() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://emulator",
                                         headers=KEY) as client:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(
                        client.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")},
                                    data={"purpose": "fine-tune"}), timeout=0.2)

        asyncio.run(give_up_mid_upload())

        with TestClient(app) as client:
            assert client.get("/_emulator/stats").json()["files"] == 1


class TestAdmin:
    def test_scenario_round_trips(self, client: TestClient) -> None:
        wanted = Scenario(job_duration_s=1, fail_jobs={"code": "c", "message": "m"},
                          server_errors={"count": 3, "status": 502, "routes": "jobs"})

        put = client.put("/_emulator/scenario", json=wanted.model_dump())

        assert put.json() == client.get("/_emulator/scenario").json() == wanted.model_dump()

    def test_put_scenario_changes_new_jobs(self, client: TestClient, clock: FakeClock) -> None:
        put_scenario(client, job_duration_s=1)
        job = create_job(client)
        clock.advance(1)

        assert get_job(client, job["id"])["status"] == "succeeded"

    def test_invalid_scenario_is_a_400(self, client: TestClient) -> None:
        response = client.put("/_emulator/scenario", json={"job_duration_s": -1})

        assert api_error(response, 400)["param"] == "job_duration_s"
        assert client.get("/_emulator/scenario").json()["job_duration_s"] == 10

    def test_stats_count_requests_per_route(self, client: TestClient) -> None:
        job = create_job(client)
        get_job(client, job["id"])
        get_job(client, job["id"])

        stats = client.get("/_emulator/stats").json()
        assert stats["requests"] == {"POST /v1/files": 1, "POST /v1/fine_tuning/jobs": 1,
                                     "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}": 2}
        assert (stats["files"], stats["jobs"], stats["jobs_by_status"]) == (
            1, 1, {"validating_files": 1})

    def test_reset_forgets_everything_but_the_scenario(self, client: TestClient) -> None:
        job = create_job(client)
        put_scenario(client, job_duration_s=7)

        assert client.post("/_emulator/reset").status_code == 200

        assert client.get("/_emulator/stats").json() == {
            "files": 0, "jobs": 0, "jobs_by_status": {}, "requests": {}, "throttled": 0,
            "server_errors": 0, "webhooks": {"queued": 0, "delivered": 0, "failed": 0}}
        api_error(client.get(f"/v1/fine_tuning/jobs/{job['id']}"), 404)
        assert client.get("/_emulator/scenario").json()["job_duration_s"] == 7
