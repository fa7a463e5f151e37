"""DashScope translation: the status tables, spec checks, request bodies and both error
shapes (with and without a byte order mark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.errors import SpecError
from orchestrator.providers.base import DeploymentStatus, JobRequest, RemoteStatus
from orchestrator.providers.dashscope import translate
from orchestrator.providers.http import classify
from orchestrator.specs import JobSpec

#: Every fine-tune status DashScope's docs and SDK name.
DOCUMENTED = {"PENDING": RemoteStatus.RUNNING, "QUEUING": RemoteStatus.RUNNING,
              "RUNNING": RemoteStatus.RUNNING, "CANCELING": RemoteStatus.CANCELLING,
              "SUCCEEDED": RemoteStatus.SUCCEEDED, "FAILED": RemoteStatus.FAILED,
              "CANCELED": RemoteStatus.CANCELLED}


def test_the_status_table_maps_every_documented_status() -> None:
    for status, expected in DOCUMENTED.items():
        assert translate.status_of(status) is expected


def test_the_status_table_covers_the_sdks_task_and_deployment_statuses() -> None:
    from dashscope.common.constants import DeploymentStatus as SdkDeployment
    from dashscope.common.constants import TaskStatus

    tasks = {v for k, v in vars(TaskStatus).items() if k.isupper()}
    deployments = {v for k, v in vars(SdkDeployment).items() if k.isupper()}

    assert tasks <= set(translate.STATUS)
    assert deployments <= set(translate.DEPLOYMENT_STATUS)


def test_unknown_statuses_read_as_still_running_or_starting() -> None:
    assert translate.status_of("PAUSED_BY_OPS") is RemoteStatus.RUNNING
    assert translate.deployment_status_of("SCALING") is DeploymentStatus.STARTING
    assert translate.deployment_status_of("RUNNING") is DeploymentStatus.SERVING
    assert translate.deployment_status_of("DELETING") is DeploymentStatus.GONE


def spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "q", "provider": "dashscope",
                                   "base_model": "qwen-turbo", "training_file": "t.jsonl",
                                   **fields})


@pytest.mark.parametrize(("fields", "expected"), [
    pytest.param({"training_type": "dpo_lora"}, "training_type: dpo_lora trains on preference "
                 "data; set method: dpo (the spec says sft)", id="dpo-type-on-sft"),
    pytest.param({"training_type": "efficient"}, "'efficient' is not a DashScope training type",
                 id="unknown-type"),
    pytest.param({"training_type": "cpt"}, "cpt (continued pre-training", id="cpt"),
    pytest.param({"hyperparameters": {"lora_rank": 8}}, "hyperparameters.lora_rank: applies "
                 "only to LoRA training; set training_type: efficient_sft", id="lora-on-full"),
    pytest.param({"method": "dpo", "hyperparameters": {"lora_alpha": 8}},
                 "set training_type: dpo_lora (this job trains with dpo_full)",
                 id="lora-on-dpo-full"),
    pytest.param({"hyperparameters": {"n_epochs": 0}}, "n_epochs: must be a whole number",
                 id="zero-epochs"),
    pytest.param({"hyperparameters": {"learning_rate": "fast"}}, "learning_rate: must be a "
                 "number above 0", id="text-rate"),
    pytest.param({"hyperparameters": {"split": 1.5}}, "split: must be a number above 0 and "
                 "below 1", id="split"),
    pytest.param({"hyperparameters": {"learning_rate_multiplier": 2}}, "not a DashScope "
                 "hyperparameter", id="openai-hyperparameter"),
    pytest.param({"seed": 3}, "seed: DashScope fine-tunes take no seed", id="seed"),
    pytest.param({"suffix": "has space"}, "suffix: must be 1-32 letters", id="suffix"),
])
def test_what_dashscope_cannot_run_is_refused_with_the_field(fields: dict[str, Any],
                                                             expected: str) -> None:
    with pytest.raises(SpecError) as error:
        translate.check_spec(spec(**fields), "job.yaml")

    assert expected in str(error.value)


def test_lora_and_dpo_specs_that_fit_are_accepted() -> None:
    translate.check_spec(spec(training_type="efficient_sft", hyperparameters={
        "n_epochs": 3, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "learning_rate": "1e-4", "target_modules": "all-linear", "max_length": 8192}), "j")
    translate.check_spec(spec(method="dpo", training_type="dpo_lora",
                              hyperparameters={"lora_rank": 8, "split": 0.9}), "j")


def request(**fields: Any) -> JobRequest:
    values: dict[str, Any] = dict(
        job_id="job_1", base_model="qwen-turbo", method="sft", training_file_id="f-1",
        validation_file_id=None, hyperparameters={"n_epochs": 2}, suffix=None,
        labels={"team": "x"})
    values.update(fields)
    return JobRequest(**values)


def test_the_job_body_carries_the_tunectl_job_id_as_job_name() -> None:
    body = translate.job_body(request(suffix="support", validation_file_id="f-2"))

    assert body == {"model": "qwen-turbo", "training_file_ids": ["f-1"],
                    "validation_file_ids": ["f-2"], "hyper_parameters": {"n_epochs": 2},
                    "training_type": "sft", "job_name": "job_1",
                    "finetuned_output_suffix": "support"}


@pytest.mark.parametrize(("method", "explicit", "sent"), [
    ("sft", None, "sft"), ("dpo", None, "dpo_full"), ("sft", "efficient_sft", "efficient_sft"),
    ("dpo", "dpo_lora", "dpo_lora")])
def test_the_training_type_sent(method: str, explicit: str | None, sent: str) -> None:
    body = translate.job_body(request(method=method, training_type=explicit))

    assert body["training_type"] == sent


def test_a_failed_job_carries_its_code_and_message() -> None:
    job = translate.remote_job({"job_id": "ft-1", "status": "FAILED", "code": "InternalError.Algo",
                                "message": "loss diverged"})

    assert job.status is RemoteStatus.FAILED
    assert job.error == "InternalError.Algo: loss diverged"
    assert job.fine_tuned_model is None


def response(status: int, body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "application/json",
                                                         **headers})


def dashscope_body(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message, "request_id": "rid-1"}).encode()


class TestErrors:
    def test_the_dashscope_shape(self) -> None:
        info = translate.describe_error(response(400, dashscope_body(
            "InvalidParameter", "Missing training files")))

        assert info.message == "InvalidParameter: Missing training files"
        assert (info.code, info.request_id, info.permanent, info.throttled) == (
            "InvalidParameter", "rid-1", False, False)

    def test_the_openai_shape_the_files_endpoint_uses(self) -> None:
        body = {"error": {"message": "'purpose' must be 'file-extract'",
                          "type": "invalid_request_error", "param": "purpose", "code": None}}
        info = translate.describe_error(response(400, json.dumps(body).encode(),
                                                 **{"x-request-id": "hdr-1"}))

        assert info.message == ("invalid_request_error: 'purpose' must be 'file-extract' "
                                "(param purpose)")
        assert info.request_id == "hdr-1"

    def test_a_byte_order_mark_before_the_body_is_ignored(self) -> None:
        info = translate.describe_error(response(
            401, translate.BOM + dashscope_body("InvalidApiKey", "Invalid API-key provided.")))

        assert info.message == "InvalidApiKey: Invalid API-key provided."
        assert translate.parse_json(translate.BOM + b'{"a": 1}') == {"a": 1}

    def test_the_msg_field_is_read_too(self) -> None:
        info = translate.describe_error(response(400, b'{"code": "X", "msg": "short"}'))

        assert info.message == "X: short"

    def test_a_body_that_is_not_json_gives_its_text(self) -> None:
        info = translate.describe_error(httpx.Response(502, text="<html>bad gateway</html>"))

        assert info.message == "<html>bad gateway</html>"

    @pytest.mark.parametrize("code", ["Throttling", "Throttling.RateQuota",
                                      "Throttling.AllocationQuota"])
    @pytest.mark.parametrize("status", [429, 400, 403])
    def test_throttling_codes_are_retryable_whatever_the_status(self, code: str,
                                                                status: int) -> None:
        resp = response(status, dashscope_body(code, "Requests rate limit exceeded"))
        error = classify(resp, provider="dashscope", operation="create job",
                         info=translate.describe_error(resp))

        assert error.retryable and type(error).__name__ == "RateLimited"

    @pytest.mark.parametrize(("status", "code", "kind"), [
        (400, "Arrearage", "ProviderRejected"),
        (400, "DataInspectionFailed", "ProviderRejected"),
        (401, "InvalidApiKey", "ProviderAuthError"),
        (403, "AccessDenied", "ProviderAuthError"),
        (404, "NotFound", "ProviderRejected"),
        (409, "Conflict", "ProviderUnavailable"),
        (500, "InternalError", "ProviderUnavailable"),
        (500, "InternalError.Algo", "ProviderUnavailable"),
        (503, "ServiceUnavailable", "ProviderUnavailable"),
    ])
    def test_other_codes_follow_the_http_status(self, status: int, code: str,
                                                kind: str) -> None:
        resp = response(status, dashscope_body(code, "m"))
        error = classify(resp, provider="dashscope", operation="op",
                         info=translate.describe_error(resp))

        assert type(error).__name__ == kind
        assert str(error) == f"dashscope op HTTP {status}: {code}: m (request rid-1)"


def test_the_spec_module_accepts_a_dashscope_spec_file(tmp_path: Path) -> None:
    from orchestrator.specs import checked_plugin, load_spec

    (tmp_path / "t.jsonl").write_text("{}\n")
    path = tmp_path / "job.yaml"
    path.write_text("name: q\nprovider: dashscope\nbase_model: qwen2.5-7b-instruct\n"
                    "training_file: t.jsonl\ntraining_type: efficient_sft\n"
                    "hyperparameters: {lora_rank: 8}\ndeploy: {capacity: 2, ttl_hours: 6}\n")

    loaded = load_spec(path)
    assert checked_plugin(loaded, str(path)).name == "dashscope"
    assert loaded.deploy is not None and loaded.deploy.ttl_hours == 6
