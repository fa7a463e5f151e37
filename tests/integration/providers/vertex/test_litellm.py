"""LiteLLM, the client most users call tuned models with, runs the ``model_ref`` a Vertex job
hands over against the emulator's tuned endpoint: the model string, base model, project and
location are all it needs (plus where Google is: the emulator on loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.config import Settings
from orchestrator.providers import registry
from orchestrator.providers.base import JobRequest, connect
from orchestrator.providers.vertex import auth
from orchestrator.providers.vertex import emulator as google_emulator
from orchestrator.providers.vertex.adapter import VertexClient
from tests.helpers import serve_in_thread, service_account_file, service_account_key

LINE = ('{"contents": [{"role": "user", "parts": [{"text": "Where is my order %d?"}]}, '
        '{"role": "model", "parts": [{"text": "It ships tomorrow (%d)."}]}]}\n')


@pytest.fixture
def root() -> Iterator[str]:
    app = google_emulator.create_app(google_emulator.Scenario(job_duration_s=0),
                                     buckets=["litellm-data"])
    with serve_in_thread(app) as url:
        httpx.post(f"{url}/_emulator/service-accounts",
                   json=service_account_key()).raise_for_status()
        yield url


def test_litellm_calls_the_tuned_endpoint_with_the_model_ref(root: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    import litellm

    key_file = service_account_file(tmp_path / "sa.json", token_uri=f"{root}/token")
    settings = Settings(data_dir=tmp_path / "data", vertex_base_url=root, gcs_base_url=root,
                        gcs_bucket="litellm-data", google_application_credentials=key_file)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(LINE % (i, i) for i in range(3)))
    auth.forget()
    with httpx.Client(timeout=30) as http:
        vertex = connect(registry.get("vertex"), settings, http)
        assert isinstance(vertex, VertexClient)
        uri = vertex.upload_file(data, "a" * 64).id
        created = vertex.create_job(JobRequest(
            job_id="job_litellm", base_model="gemini-2.5-flash", method="sft",
            training_file_id=uri, validation_file_id=None, hyperparameters={}, suffix=None,
            labels={}))
        ref = vertex.get_job(created.id).model_ref
    assert ref is not None

    answer = litellm.completion(
        messages=[{"role": "user", "content": "Where is my order 2?"}], api_base=root,
        vertex_credentials=key_file.read_text(),
        **{k: ref[k] for k in ("model", "base_model", "vertex_project", "vertex_location")})

    assert answer.choices[0].message.content == "It ships tomorrow (2)."
    assert json.loads(httpx.get(f"{root}/_emulator/stats").text)["generate_content"] == 1
