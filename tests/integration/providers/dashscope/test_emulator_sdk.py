"""Conformance: the official `dashscope` SDK against the emulator on a real uvicorn socket,
mounted under /dashscope beside the OpenAI emulator exactly as `tunectl emulator` serves it.

DashScope publishes no machine-readable spec, so the SDK is the reference client: every
call below must parse into the SDK's own response types (FineTune, DeploymentOutput …) with
the fields it reads, and errors must reach it as ``status_code`` / ``code`` / ``message``.
The SDK never raises on an HTTP error; it returns the response object.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashscope import Files
from dashscope.finetune.deployments import Deployments
from dashscope.finetune.finetunes import FineTunes

from orchestrator.providers import emulation
from orchestrator.providers.dashscope import emulator as dashscope
from orchestrator.providers.dashscope.emulator import Scenario
from orchestrator.providers.openai import emulator as openai
from tests.helpers import serve_in_thread

API_KEY = "sk-dashscope-conformance"
TRAINING = b"".join(b'{"messages": [{"role": "user", "content": "q%d"}, '
                    b'{"role": "assistant", "content": "a%d"}]}\n' % (i, i) for i in range(12))


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    """Both emulators on one loopback port (OpenAI at the root, DashScope under /dashscope)."""
    app = emulation.combined_app([dashscope.mount(job_duration_s=1, api_key=API_KEY),
                                  openai.mount(job_duration_s=1, api_key=API_KEY)])
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def base(root: str) -> str:
    """The base URL the SDK is given (``base_address``)."""
    return f"{root}/dashscope/api/v1"


@pytest.fixture
def admin(root: str) -> Iterator[Callable[..., None]]:
    """A fresh emulator with short jobs and deployments; call it to change the scenario."""
    with httpx.Client(base_url=f"{root}/dashscope") as http:

        def set_scenario(**fields: Any) -> None:
            scenario = Scenario(job_duration_s=0.6, deployment_duration_s=0.6, **fields)
            http.put("/_emulator/scenario", json=scenario.model_dump()).raise_for_status()

        http.post("/_emulator/reset").raise_for_status()
        set_scenario()
        yield set_scenario


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def uploaded(base: str, tmp_path: Path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_bytes(TRAINING)
    response = Files.upload(str(path), description="conformance", api_key=API_KEY,
                            base_address=base)
    assert response.status_code == 200, response
    file_id: str = response.output["uploaded_files"][0]["file_id"]
    return file_id


def finished_job(base: str, tmp_path: Path, **fields: Any) -> Any:
    created = FineTunes.call(model="qwen-turbo", training_file_ids=uploaded(base, tmp_path),
                             api_key=API_KEY, base_address=base, **fields)
    assert created.status_code == 200, created
    return wait_for(lambda: FineTunes.get(created.output.job_id, api_key=API_KEY,
                                          base_address=base),
                    lambda r: r.output.status in ("SUCCEEDED", "FAILED", "CANCELED"))


def test_files_upload_list_get_and_delete(base: str, admin: Any, tmp_path: Path) -> None:
    file_id = uploaded(base, tmp_path)

    listed = Files.list(api_key=API_KEY, base_address=base)
    got = Files.get(file_id, api_key=API_KEY, base_address=base)
    deleted = Files.delete(file_id, api_key=API_KEY, base_address=base)
    missing = Files.get(file_id, api_key=API_KEY, base_address=base)

    assert listed.status_code == 200 and listed.output["total"] == 1
    assert listed.output["files"][0]["file_id"] == file_id
    assert got.output["name"] == "train.jsonl" and got.output["description"] == "conformance"
    assert deleted.status_code == 200 and deleted.request_id
    assert (missing.status_code, missing.code) == (404, "NotFound")


def test_a_fine_tune_runs_to_a_tuned_model_with_logs(base: str, admin: Any,
                                                     tmp_path: Path) -> None:
    done = finished_job(base, tmp_path, mode="efficient_sft",
                        hyper_parameters={"n_epochs": 2, "lora_rank": 8})

    listed = FineTunes.list(api_key=API_KEY, base_address=base)
    logs = FineTunes.logs(done.output.job_id, offset=0, line=100, api_key=API_KEY,
                          base_address=base)

    assert done.output.status == "SUCCEEDED"
    assert done.output.training_type == "efficient_sft"
    assert done.output.finetuned_output == f"qwen-turbo-{done.output.job_id}"
    assert done.output.hyper_parameters["lora_rank"] == 8
    assert [j.job_id for j in listed.output.jobs] == [done.output.job_id]
    assert listed.output.total == 1
    assert logs.output["logs"][-1].endswith("##FT_COMPLETE##")


def test_cancel_then_delete(base: str, admin: Any, tmp_path: Path) -> None:
    admin_fields = {"job_duration_s": 30}
    admin(**{k: v for k, v in admin_fields.items() if k != "job_duration_s"})
    created = FineTunes.call(model="qwen-turbo", training_file_ids=[uploaded(base, tmp_path)],
                             api_key=API_KEY, base_address=base)
    job_id = created.output.job_id

    cancelled = FineTunes.cancel(job_id, api_key=API_KEY, base_address=base)
    again = FineTunes.cancel(job_id, api_key=API_KEY, base_address=base)
    ended = wait_for(lambda: FineTunes.get(job_id, api_key=API_KEY, base_address=base),
                     lambda r: r.output.status == "CANCELED")
    deleted = FineTunes.delete(job_id, api_key=API_KEY, base_address=base)

    assert cancelled.status_code == 200 and cancelled.output.status == "success"
    assert (again.status_code, again.code) == (400, "UnsupportedOperation")
    assert ended.output.status == "CANCELED"
    assert deleted.status_code == 200 and deleted.output.status == "success"


def test_a_deployment_is_created_served_scaled_listed_and_deleted(base: str, admin: Any,
                                                                  tmp_path: Path) -> None:
    model = finished_job(base, tmp_path).output.finetuned_output

    created = Deployments.call(model=model, capacity=2, api_key=API_KEY, base_address=base)
    name = created.output.deployed_model
    serving = wait_for(lambda: Deployments.get(name, api_key=API_KEY, base_address=base),
                       lambda r: r.output.status == "RUNNING")
    scaled = Deployments.scale(name, capacity=4, api_key=API_KEY, base_address=base)
    listed = Deployments.list(api_key=API_KEY, base_address=base)
    deleted = Deployments.delete(name, api_key=API_KEY, base_address=base)

    assert created.status_code == 200 and created.output.status == "PENDING"
    assert created.output.model_name == model and created.output.capacity == 2
    assert serving.output.status == "RUNNING" and serving.output.ready_capacity == 2
    assert scaled.output.capacity == 4
    assert [d.deployed_model for d in listed.output.deployments] == [name]
    assert deleted.status_code == 200 and deleted.output.status == "success"


def test_errors_reach_the_sdk_as_code_and_message(base: str, admin: Any) -> None:
    missing = FineTunes.get("ft-202601010000-zzzz", api_key=API_KEY, base_address=base)
    wrong_key = FineTunes.list(api_key="sk-wrong", base_address=base)
    bad = FineTunes.call(model="gpt-4o", training_file_ids=["x"], api_key=API_KEY,
                         base_address=base)
    not_tuned = Deployments.call(model="qwen-turbo", capacity=1, api_key=API_KEY,
                                 base_address=base)

    assert (missing.status_code, missing.code) == (404, "NotFound")
    assert (wrong_key.status_code, wrong_key.code, wrong_key.message) == (
        401, "InvalidApiKey", "Invalid API-key provided.")
    assert (bad.status_code, bad.code) == (400, "InvalidParameter")
    assert bad.message == "Model gpt-4o does not support fine-tuning"
    assert (not_tuned.status_code, not_tuned.code) == (400, "InvalidParameter")
    assert missing.request_id and bad.request_id


def test_throttling_and_server_errors_reach_the_sdk(base: str, admin: Any) -> None:
    admin(throttle={"count": 1}, server_errors={"count": 1, "status": 503})

    throttled = FineTunes.list(api_key=API_KEY, base_address=base)
    unavailable = FineTunes.list(api_key=API_KEY, base_address=base)
    fine = FineTunes.list(api_key=API_KEY, base_address=base)

    assert (throttled.status_code, throttled.code) == (429, "Throttling.RateQuota")
    assert (unavailable.status_code, unavailable.code) == (503, "ServiceUnavailable")
    assert fine.status_code == 200


def test_a_body_after_a_byte_order_mark_trips_the_sdk_but_not_tunectl(
        base: str, admin: Any, tmp_path: Path) -> None:
    """The SDK decodes application/json as plain UTF-8, so a BOM breaks its JSON parsing;
    tunectl's adapter strips it (the reason the adapter handles it at all)."""
    import requests

    from orchestrator.providers.dashscope.adapter import DashScopeClient

    path = tmp_path / "train.jsonl"
    path.write_bytes(TRAINING)
    admin(utf8_bom=True)

    with pytest.raises(requests.exceptions.JSONDecodeError, match="BOM"):
        Files.upload(str(path), api_key=API_KEY, base_address=base)
    with httpx.Client() as http:
        tunectl = DashScopeClient(http, base_url=base, api_key=API_KEY)
        found = tunectl.upload_file(path, "ef" * 32)
        assert tunectl.file_exists(found.id)
