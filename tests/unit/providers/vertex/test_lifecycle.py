"""Vertex jobs through the real runner, scheduler and emulator: a Gemini SFT job from an
OpenAI-format dataset to a tuned endpoint and its model_ref, a token that expires mid-job,
a retried submit, a cancel, and failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from google.genai import types

from orchestrator.config import Settings
from orchestrator.datasets import validate_file
from orchestrator.errors import SpecError
from orchestrator.providers import registry
from orchestrator.providers.base import JobRequest, Prompter, connect, pinned_options
from orchestrator.providers.http import shared_client
from orchestrator.providers.vertex import auth
from orchestrator.providers.vertex.emulator import Scenario
from orchestrator.providers.vertex.emulator_state import Failure
from tests.helpers import Clock, Pump, in_process_emulator, make_vertex_spec


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pump(settings: Settings, engine: sa.Engine, clock: Clock) -> Pump:
    auth.forget()
    return Pump(settings, engine, clock)


def stats(emulator: TestClient) -> dict[str, Any]:
    return dict(emulator.get("/google/_emulator/stats").json())


def stored_object(emulator: TestClient, uri: str) -> bytes:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    reply = emulator.get(f"/google/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}",
                         params={"alt": "media"})
    reply.raise_for_status()
    return reply.content


class TestEndToEnd:
    def test_an_openai_chat_dataset_is_converted_uploaded_tuned_and_callable(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, google=Scenario(job_duration_s=10)) as emulator:
            job = pump.submit(make_vertex_spec(tmp_path))
            done = pump.until_settled(job.id)
            uploaded = stored_object(emulator, str(done.training_file_id))
            counted = stats(emulator)
            client = registry.get("vertex").connect(pump.settings, shared_client(pump.settings))
            assert isinstance(client, Prompter)
            answer = client.ask(done.result["model_ref"], "question 3")

        assert done.state == "succeeded"
        assert [t.to_state for t in pump.history(job.id)] == [
            "queued", "validating", "uploading", "submitting", "training", "training",
            "finalizing", "succeeded"]
        ref = done.result["model_ref"]
        endpoint_id = ref["endpoint"].rsplit("/", 1)[1]
        assert ref == {"provider": "vertex", "model": f"vertex_ai/gemini/{endpoint_id}",
                       "base_model": "vertex_ai/gemini-2.5-flash",
                       "vertex_project": "tunectl-test", "vertex_location": "us-central1",
                       "endpoint": f"projects/tunectl-test/locations/us-central1/endpoints/"
                                   f"{endpoint_id}"}
        assert done.result["tuned_model"] == done.fine_tuned_model
        assert done.fine_tuned_model is not None and done.fine_tuned_model.endswith("@1")
        assert answer == "answer 3"  # the tuned model learned its dataset
        assert counted["uploads_multipart"] == 1 and counted["tuning_jobs"] == 1
        # Converted before upload: the object is Gemini's format, line for line.
        assert done.dataset is not None
        assert done.dataset["training"]["converted_from"] == "openai-chat"
        assert done.dataset["training"]["format"] == "vertex-gemini"
        assert done.training_blob != job.training_blob
        lines = [json.loads(line) for line in uploaded.decode().splitlines()]
        assert len(lines) == 12
        assert lines[0] == {"contents": [{"role": "user", "parts": [{"text": "question 0"}]},
                                         {"role": "model", "parts": [{"text": "answer 0"}]}]}
        for line in lines:  # Google's own SDK types read every record
            [types.Content.model_validate(c) for c in line["contents"]]
        copy = tmp_path / "uploaded.jsonl"
        copy.write_bytes(uploaded)
        report = validate_file(copy, provider="vertex", model="gemini-2.5-flash")
        assert report.ok and report.format == "vertex-gemini" and report.examples == 12

    def test_short_lived_tokens_are_refreshed_before_they_expire(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        """A token within google-auth's refresh margin of expiry is replaced before use."""
        with in_process_emulator(clock, google=Scenario(job_duration_s=5,
                                                        token_lifetime_s=60)) as emulator:
            done = pump.until_settled(pump.submit(make_vertex_spec(tmp_path)).id)
            counted = stats(emulator)

        assert done.state == "succeeded"
        assert counted["tokens_issued"] >= 2 and "tokens_refused" not in counted

    def test_spec_options_choose_project_region_and_bucket(self, pump: Pump, clock: Clock,
                                                           tmp_path: Path) -> None:
        options = {"project": "acme-tuning", "location": "europe-west4", "bucket": "acme-data",
                   "prefix": "ft/"}
        pump.settings = pump.settings.model_copy(update={
            "vertex_projects": ["acme-tuning"], "gcs_buckets": ["acme-data"]})
        with in_process_emulator(clock, google=Scenario(job_duration_s=2)):
            done = pump.until_settled(pump.submit(make_vertex_spec(
                tmp_path, provider_options=options)).id)

        assert done.state == "succeeded"
        assert str(done.training_file_id).startswith("gs://acme-data/ft/tunectl-")
        assert str(done.provider_job_id).startswith(
            "projects/acme-tuning/locations/europe-west4/tuningJobs/")
        assert done.result["model_ref"]["vertex_location"] == "europe-west4"

    def test_a_token_expiring_mid_job_is_refreshed_without_failing_it(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        """Tokens live 10 minutes of the emulator's clock and the job trains for 30, so the
        token google-auth still holds expires at the server mid-job: its 401 gets a fresh
        token and the call goes through."""
        with in_process_emulator(clock, google=Scenario(job_duration_s=1800,
                                                        token_lifetime_s=600)) as emulator:
            done = pump.until_settled(pump.submit(make_vertex_spec(tmp_path)).id, step_s=60)
            counted = stats(emulator)

        assert done.state == "succeeded"
        assert counted["tokens_issued"] >= 3 and counted["tokens_refused"] >= 2
        assert all(t.to_state != "failed" for t in pump.history(done.id))
        assert done.last_error is None, done.last_error


class TestWhere:
    @pytest.mark.parametrize(("options", "setting"), [
        pytest.param({"project": "someone-else"}, "TUNECTL_VERTEX_PROJECTS", id="project"),
        pytest.param({"bucket": "someone-elses"}, "TUNECTL_GCS_BUCKETS", id="bucket"),
    ])
    def test_a_spec_may_name_only_a_project_or_bucket_the_operator_allows(
            self, pump: Pump, tmp_path: Path, options: dict[str, str], setting: str) -> None:
        with pytest.raises(SpecError, match=setting) as refused:
            pump.submit(make_vertex_spec(tmp_path, provider_options=options))
        allowed = pump.settings.model_copy(update={"vertex_projects": ["someone-else"],
                                                   "gcs_buckets": ["someone-elses"]})
        plugin = registry.get("vertex")

        assert "\n" not in str(refused.value)
        assert pinned_options(plugin, allowed, options, "s.yaml")[next(iter(options))] == \
            next(iter(options.values()))
        assert pinned_options(plugin, pump.settings, {"bucket": "tunectl-test-data"}, "s.yaml")

    def test_a_job_stays_where_it_was_submitted_when_settings_change(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        """A retried submit looks for its tuning job where the first attempt made it, and
        every later call goes there too."""
        with in_process_emulator(clock, google=Scenario(job_duration_s=5)) as emulator:
            job = pump.submit(make_vertex_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent(limit=2)  # validate, upload: the job is now submitting
            uploaded = pump.job(job.id)
            client = connect(registry.get("vertex"), pump.settings, shared_client(pump.settings),
                             uploaded.spec["provider_options"])
            earlier = client.create_job(JobRequest(
                job_id=job.id, base_model="gemini-2.5-flash", method="sft",
                training_file_id=str(uploaded.training_file_id), validation_file_id=None,
                hyperparameters={}, suffix=None, labels={}))
            pump.settings = pump.settings.model_copy(update={
                "vertex_location": "europe-west4", "gcs_bucket": "other-bucket",
                "gcs_prefix": "elsewhere/"})
            done = pump.until_settled(job.id)
            counted = stats(emulator)

        assert uploaded.spec["provider_options"] == {
            "location": "us-central1", "bucket": "tunectl-test-data", "prefix": "tunectl/"}
        assert done.state == "succeeded" and done.provider_job_id == earlier.id
        assert counted["tuning_jobs"] == 1
        assert done.result["model_ref"]["vertex_location"] == "us-central1"


class TestIdempotency:
    def test_a_retried_submit_finds_the_tuning_job_by_its_label(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, google=Scenario(job_duration_s=5)) as emulator:
            job = pump.submit(make_vertex_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent(limit=2)  # validate, upload: the job is now submitting
            uploaded = pump.job(job.id)
            assert uploaded.state == "submitting"
            # An earlier attempt created the tuning job and died before recording it.
            client = registry.get("vertex").connect(pump.settings, shared_client(pump.settings))
            earlier = client.create_job(JobRequest(
                job_id=job.id, base_model="gemini-2.5-flash", method="sft",
                training_file_id=str(uploaded.training_file_id), validation_file_id=None,
                hyperparameters={}, suffix=None, labels={}))
            done = pump.until_settled(job.id)
            counted = stats(emulator)

        assert done.state == "succeeded"
        assert done.provider_job_id == earlier.id
        assert counted["tuning_jobs"] == 1
        submitted = next(t for t in pump.history(job.id) if t.from_state == "submitting")
        assert submitted.reason == f"found the provider job an earlier attempt created {earlier.id}"

    def test_the_same_dataset_is_uploaded_once(self, pump: Pump, clock: Clock,
                                               tmp_path: Path) -> None:
        with in_process_emulator(clock, google=Scenario(job_duration_s=2)) as emulator:
            first = pump.until_settled(pump.submit(make_vertex_spec(tmp_path)).id)
            second = pump.until_settled(pump.submit(make_vertex_spec(tmp_path)).id)
            counted = stats(emulator)

        assert first.training_file_id == second.training_file_id
        assert counted["uploads_multipart"] == 1 and counted["tuning_jobs"] == 2


class TestStopping:
    def test_a_cancel_while_training_cancels_the_tuning_job(self, pump: Pump, clock: Clock,
                                                            tmp_path: Path) -> None:
        from orchestrator import jobs as job_ops

        with in_process_emulator(clock, google=Scenario(job_duration_s=100)) as emulator:
            job = pump.submit(make_vertex_spec(tmp_path))
            for _ in range(5):
                pump.scheduler().tick()
                pump.run_sent()
                clock.advance(1)
            assert pump.job(job.id).state == "training"
            job_ops.cancel(pump.engine, job.id, now=clock())
            done = pump.until_settled(job.id, step_s=5)
            counted = stats(emulator)

        assert done.state == "cancelled"
        assert done.provider_status == "JOB_STATE_CANCELLED"
        assert counted["jobs_by_state"] == {"JOB_STATE_CANCELLED": 1}
        # Polled while CANCELLING (for 10 s, every 5 s), it was asked to cancel only once.
        assert counted["requests"][
            "POST /{version}/projects/{project}/locations/{location}/tuningJobs/{job_id}:cancel"
        ] == 1

    @pytest.mark.parametrize(("failure", "reason"), [
        pytest.param(Failure(), "INVALID_ARGUMENT: Dataset validation failed.", id="failed"),
        pytest.param(Failure(state="JOB_STATE_EXPIRED", message="no capacity"),
                     "the tuning job expired (INVALID_ARGUMENT: no capacity)", id="expired"),
    ])
    def test_a_job_vertex_ends_badly_fails_with_the_reason(
            self, pump: Pump, clock: Clock, tmp_path: Path, failure: Failure,
            reason: str) -> None:
        with in_process_emulator(clock, google=Scenario(job_duration_s=2, fail_jobs=failure)):
            done = pump.until_settled(pump.submit(make_vertex_spec(tmp_path)).id)

        assert done.state == "failed"
        assert done.error == f"provider failed the job: {reason}"

    def test_a_dataset_that_cannot_be_converted_fails_before_any_upload(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        bad = tmp_path / "images.jsonl"
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        bad.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "text", "text": f"q{i}"}, image]},
            {"role": "assistant", "content": "a"}]}) + "\n" for i in range(3)))
        with in_process_emulator(clock) as emulator:
            done = pump.until_settled(pump.submit(make_vertex_spec(
                tmp_path, training_file=bad)).id)
            counted = stats(emulator)

        assert done.state == "failed"
        assert done.error is not None and done.error.startswith(
            "training_file is in openai-chat format and 3 of its 3 lines cannot be converted "
            "to vertex-gemini: training_file:1: not converted: messages[0] has an image")
        assert counted["objects"] == 0


class TestShow:
    def test_tunectl_show_prints_the_model_ref(
            self, pump: Pump, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        from tests.unit.test_cli import tunectl

        with in_process_emulator(clock, google=Scenario(job_duration_s=2)):
            done = pump.until_settled(pump.submit(make_vertex_spec(tmp_path)).id)
        monkeypatch.setenv("TUNECTL_DATABASE_URL", pump.settings.database_url)
        monkeypatch.setenv("TUNECTL_DATA_DIR", str(pump.settings.data_dir))
        monkeypatch.setenv("COLUMNS", "200")

        code, human, _ = tunectl(capsys, "show", done.id)
        _, raw, _ = tunectl(capsys, "show", done.id, "--json")

        ref = done.result["model_ref"]
        assert code == 0
        assert "  model ref:\n" in human
        for key in ("model", "base_model", "vertex_project", "vertex_location", "endpoint"):
            assert f"    {key}: {ref[key]}\n" in human
        assert json.loads(raw)["model_ref"] == ref
