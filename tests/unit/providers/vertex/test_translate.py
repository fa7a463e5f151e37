"""Vertex translation: the status table against job_state.proto, spec checks, request
bodies, TuningJob JSON → RemoteJob and model_ref, and Google error bodies."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.errors import ProviderRejected, ProviderUnavailable, RateLimited, SpecError
from orchestrator.providers.base import JobRequest, RemoteStatus
from orchestrator.providers.http import classify
from orchestrator.providers.vertex import translate
from orchestrator.specs import JobSpec

SPECS = Path(__file__).resolve().parents[4].parent / "shared" / "specs" / "vertex"
ENDPOINT = "projects/proj-123/locations/europe-west4/endpoints/4965075652664360960"


def proto_enum(file: str, name: str) -> list[str]:
    """The member names of enum ``name`` in one of the official protos."""
    path = SPECS / file
    assert path.is_file(), f"the official Vertex protos are missing: {path}"
    body = re.search(rf"enum {name} \{{(.*?)\n\s*\}}", path.read_text(), re.S)
    assert body is not None
    return re.findall(r"^\s*([A-Z_]+) = \d+;", body.group(1), re.M)


def spec(**overrides: Any) -> JobSpec:
    data: dict[str, Any] = {"name": "g", "provider": "vertex", "base_model": "gemini-2.5-flash",
                            "training_file": "t.jsonl"}
    data.update(overrides)
    return JobSpec.model_validate(data)


class TestStatusTable:
    def test_every_job_state_of_the_v1_api_has_a_row(self) -> None:
        """So EXPIRED or PARTIALLY_SUCCEEDED can never be read as 'still running'."""
        states = proto_enum("job_state.proto", "JobState")

        assert len(states) == 12
        assert set(translate.STATUS) == set(states)

    @pytest.mark.parametrize(("state", "status"), [
        pytest.param("JOB_STATE_EXPIRED", RemoteStatus.FAILED, id="expired-fails"),
        pytest.param("JOB_STATE_PARTIALLY_SUCCEEDED", RemoteStatus.FAILED,
                     id="partially-succeeded-fails"),
        pytest.param("JOB_STATE_PAUSED", RemoteStatus.RUNNING, id="paused-is-still-live"),
        pytest.param("JOB_STATE_CANCELLING", RemoteStatus.CANCELLING,
                     id="cancelling-is-live-and-accepted-its-cancel"),
        pytest.param("JOB_STATE_CANCELLED", RemoteStatus.CANCELLED, id="cancelled"),
        pytest.param("JOB_STATE_SOMETHING_NEW", RemoteStatus.RUNNING, id="unknown-is-running"),
    ])
    def test_terminal_states_end_the_job(self, state: str, status: RemoteStatus) -> None:
        assert translate.status_of(state) is status

    def test_adapter_sizes_are_the_proto_enum(self) -> None:
        sizes = proto_enum("tuning_job.proto", "AdapterSize")

        assert set(translate.ADAPTER_SIZES.values()) == set(sizes) - {"ADAPTER_SIZE_UNSPECIFIED"}


class TestCheckSpec:
    def test_a_gemini_sft_spec_with_vertex_hyperparameters_passes(self) -> None:
        translate.check_spec(spec(hyperparameters={"epoch_count": 3, "adapter_size": 4,
                                                   "learning_rate_multiplier": 1.5},
                                  labels={"team": "support"},
                                  provider_options={"project": "my-proj-1",
                                                    "location": "us-central1",
                                                    "bucket": "my-bucket",
                                                    "prefix": "tuning/data/"}), "s.yaml")

    @pytest.mark.parametrize(("overrides", "field", "words"), [
        pytest.param({"base_model": "gpt-4o-mini"}, "base_model", "not a Gemini model",
                     id="not-gemini"),
        pytest.param({"method": "dpo"}, "method", "supervised tuning only", id="dpo"),
        pytest.param({"seed": 3}, "seed", "no seed", id="seed"),
        pytest.param({"training_type": "sft"}, "training_type", "no training types",
                     id="training-type"),
        pytest.param({"hyperparameters": {"batch_size": 8}}, "hyperparameters.batch_size",
                     "not a Vertex hyperparameter", id="batch-size"),
        pytest.param({"hyperparameters": {"n_epochs": 2, "epoch_count": 3}},
                     "hyperparameters.n_epochs", "keep one", id="both-epoch-names"),
        pytest.param({"hyperparameters": {"epoch_count": 0}}, "hyperparameters.epoch_count",
                     "at least 1", id="zero-epochs"),
        pytest.param({"hyperparameters": {"adapter_size": 3}}, "hyperparameters.adapter_size",
                     "1, 2, 4, 8, 16 or 32", id="adapter-size"),
        pytest.param({"hyperparameters": {"learning_rate_multiplier": -1}},
                     "hyperparameters.learning_rate_multiplier", "above 0", id="rate"),
        pytest.param({"labels": {"team": "Support Team"}}, "labels.team", "lower-case",
                     id="label-value"),
        pytest.param({"labels": {"tunectl_job_id": "x"}}, "labels.tunectl_job_id",
                     "tunectl's own", id="reserved-label"),
        pytest.param({"provider_options": {"location": "evil.example.com/#"}},
                     "provider_options.location", "Vertex location", id="location-is-a-host"),
        pytest.param({"provider_options": {"bucket": "gs://b"}}, "provider_options.bucket",
                     "without gs://", id="bucket-uri"),
        pytest.param({"provider_options": {"prefix": "a/../b"}}, "provider_options.prefix",
                     "object prefix", id="prefix-dots"),
        pytest.param({"provider_options": {"prefix": "p/" * 60}}, "provider_options.prefix",
                     "too long", id="prefix-too-long"),
    ])
    def test_what_vertex_cannot_run_is_refused_naming_the_field(
            self, overrides: dict[str, Any], field: str, words: str) -> None:
        with pytest.raises(SpecError) as caught:
            translate.check_spec(spec(**overrides), "s.yaml")

        assert caught.value.field == field
        assert words in caught.value.reason


class TestRequests:
    def test_the_body_sends_int64_as_strings_and_the_job_id_as_a_label(self) -> None:
        request = JobRequest(job_id="job_01ABCDEF", base_model="gemini-2.5-flash",
                             method="sft", training_file_id="gs://b/t.jsonl",
                             validation_file_id="gs://b/v.jsonl",
                             hyperparameters={"n_epochs": 3, "adapter_size": 8,
                                              "learning_rate_multiplier": 2},
                             suffix=None, labels={"team": "a"}, name="support bot")

        body = translate.job_body(request, "gs://b/t.jsonl", "gs://b/v.jsonl")

        assert body["supervisedTuningSpec"] == {
            "trainingDatasetUri": "gs://b/t.jsonl", "validationDatasetUri": "gs://b/v.jsonl",
            "hyperParameters": {"epochCount": "3", "adapterSize": "ADAPTER_SIZE_EIGHT",
                                "learningRateMultiplier": 2.0}}
        assert body["labels"] == {"team": "a", "tunectl_job_id": "job_01abcdef"}
        assert body["tunedModelDisplayName"] == "support bot"
        assert translate.job_filter("job_01ABCDEF") == 'labels.tunectl_job_id="job_01abcdef"'

    def test_dataset_objects_are_named_by_content_hash(self) -> None:
        sha = "ab" * 32

        assert translate.dataset_uri("bkt", "tunectl/", sha) == \
            f"gs://bkt/tunectl/tunectl-{sha}.jsonl"
        assert translate.object_path("bkt", f"a/tunectl-{sha}.jsonl") == \
            f"/storage/v1/b/bkt/o/a%2Ftunectl-{sha}.jsonl"
        assert translate.split_uri("gs://bkt/a/x.jsonl") == ("bkt", "a/x.jsonl")

    @pytest.mark.parametrize("name", [
        "projects/proj-1234/locations/us-central1/tuningJobs/1/../x", "https://evil/x",
        "projects/proj-1234/locations/us-central1/endpoints/1",
        "projects/proj-1234/locations/evil.example#/tuningJobs/1",
        "projects/proj-1234/locations/us-central1/tuningJobs/1\n"])
    def test_only_tuning_job_names_give_a_location(self, name: str) -> None:
        with pytest.raises(ValueError):
            translate.job_location(name)

    def test_a_tuning_job_is_asked_about_where_its_name_says(self) -> None:
        name = "projects/123456789/locations/europe-west4/tuningJobs/77"

        assert translate.job_location(name) == "europe-west4"

    @pytest.mark.parametrize("location", ["evil.example#", "evil.example/x", "us-central1\n",
                                          "us-central1.evil.example", ""])
    def test_no_host_is_built_from_anything_but_a_location(self, location: str) -> None:
        """The bearer token goes to the host the location names."""
        endpoint = f"projects/proj-1234/locations/{location}/endpoints/1"

        with pytest.raises(ValueError):
            translate.base_url(location)
        with pytest.raises(ValueError):
            translate.endpoint_location(endpoint)
        with pytest.raises(SpecError):
            translate.check_options({"location": location}, "s.yaml")

    @pytest.mark.parametrize(("location", "base"), [
        ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com"),
    ])
    def test_the_endpoint_follows_the_location(self, location: str, base: str) -> None:
        assert translate.base_url(location) == base


NOW = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)


def job(state: str, **extra: Any) -> dict[str, Any]:
    return {"name": "projects/proj-123/locations/europe-west4/tuningJobs/77", "state": state,
            "baseModel": "gemini-2.5-flash", **extra}


class TestResponses:
    def test_a_succeeded_job_hands_over_a_litellm_model_ref(self) -> None:
        remote = translate.remote_job(job(
            "JOB_STATE_SUCCEEDED", tunedModel={"model": "projects/proj-123/locations/"
                                                        "europe-west4/models/9@1",
                                               "endpoint": ENDPOINT},
            tuningDataStats={"supervisedTuningDataStats": {"tuningDatasetExampleCount": "500"}}),
            NOW)

        assert remote.status is RemoteStatus.SUCCEEDED
        assert remote.fine_tuned_model == "projects/proj-123/locations/europe-west4/models/9@1"
        assert remote.model_ref == {
            "provider": "vertex", "model": "vertex_ai/gemini/4965075652664360960",
            "base_model": "vertex_ai/gemini-2.5-flash", "vertex_project": "proj-123",
            "vertex_location": "europe-west4", "endpoint": ENDPOINT}
        assert remote.result["endpoint"] == ENDPOINT
        assert remote.result["tuningDatasetExampleCount"] == 500

    def test_a_succeeded_job_without_its_endpoint_yet_is_still_running(self) -> None:
        remote = translate.remote_job(job("JOB_STATE_SUCCEEDED",
                                          endTime="2026-08-01T11:30:00Z"), NOW)

        assert remote.status is RemoteStatus.RUNNING
        assert remote.model_ref is None

    @pytest.mark.parametrize("extra", [
        pytest.param({"endTime": "2026-08-01T10:59:00Z"}, id="ended-over-an-hour-ago"),
        pytest.param({}, id="no-end-time"),
        pytest.param({"endTime": "2026-08-01T11:59:00Z", "tunedModel": {
            "endpoint": "projects/proj-123/locations/evil.example#/endpoints/1"}},
            id="an-endpoint-that-is-no-endpoint-name"),
    ])
    def test_a_succeeded_job_that_never_names_its_endpoint_fails(
            self, extra: dict[str, Any]) -> None:
        """Else it would be polled for ever."""
        remote = translate.remote_job(job("JOB_STATE_SUCCEEDED", **extra),
                                      NOW + timedelta(hours=1) if "tunedModel" in extra
                                      else NOW)

        assert remote.status is RemoteStatus.FAILED and remote.model_ref is None
        assert remote.error is not None and "named no endpoint" in remote.error

    @pytest.mark.parametrize(("state", "error", "reason"), [
        pytest.param("JOB_STATE_FAILED", {"code": 3, "message": "Dataset is invalid."},
                     "INVALID_ARGUMENT: Dataset is invalid.", id="failed"),
        pytest.param("JOB_STATE_EXPIRED", None, "the tuning job expired", id="expired"),
        pytest.param("JOB_STATE_PARTIALLY_SUCCEEDED", {"code": 13, "message": "lost shard"},
                     "the tuning job only partially succeeded (INTERNAL: lost shard)",
                     id="partial"),
        pytest.param("JOB_STATE_FAILED", None,
                     "Vertex reported the tuning job failed without a reason", id="no-reason"),
    ])
    def test_failures_say_why_in_one_line(self, state: str, error: Any, reason: str) -> None:
        remote = translate.remote_job(job(state, **({"error": error} if error else {})), NOW)

        assert remote.status is RemoteStatus.FAILED
        assert remote.error == reason

    def test_events_are_the_jobs_milestones(self) -> None:
        found = translate.events(job("JOB_STATE_FAILED", createTime="2026-01-01T00:00:00Z",
                                     endTime="2026-01-01T01:00:00.5Z",
                                     error={"code": 3, "message": "bad"}))

        assert [e.message for e in found] == ["tuning job created", "INVALID_ARGUMENT: bad"]
        assert found[-1].level == "error"


def response(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("GET", "https://x"))


class TestErrors:
    @pytest.mark.parametrize(("status", "google", "cls"), [
        pytest.param(429, "RESOURCE_EXHAUSTED", RateLimited, id="quota-429"),
        pytest.param(400, "RESOURCE_EXHAUSTED", RateLimited, id="quota-any-status"),
        pytest.param(503, "UNAVAILABLE", ProviderUnavailable, id="unavailable"),
        pytest.param(400, "INVALID_ARGUMENT", ProviderRejected, id="invalid"),
    ])
    def test_google_errors_are_classified(self, status: int, google: str,
                                          cls: type[Exception]) -> None:
        reply = response(status, {"error": {"code": status, "message": "m", "status": google}})
        info = translate.describe_error(reply)

        assert info.message == f"{google}: m"
        assert isinstance(classify(reply, provider="vertex", operation="x", info=info), cls)

    def test_retry_info_says_how_long_to_wait(self) -> None:
        reply = response(429, {"error": {"code": 429, "message": "m", "status":
                                         "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "42.5s"}]}})

        error = classify(reply, provider="vertex", operation="x",
                         info=translate.describe_error(reply))

        assert isinstance(error, RateLimited) and error.retry_after == 42.5

    @pytest.mark.parametrize("body", [
        pytest.param({"error": {"code": 501, "message": "m", "status": "UNIMPLEMENTED"}},
                     id="google-shape"),
        pytest.param("Not Implemented", id="no-body"),
    ])
    def test_unimplemented_is_permanent(self, body: Any) -> None:
        reply = response(501, body)

        error = classify(reply, provider="vertex", operation="x",
                         info=translate.describe_error(reply))

        assert isinstance(error, ProviderRejected) and not error.retryable

    def test_cloud_storage_errors_without_a_status_still_read(self) -> None:
        reply = response(404, {"error": {"code": 404, "message": "No such object: b/o",
                                         "errors": [{"reason": "notFound"}]}})

        assert translate.describe_error(reply).message == "No such object: b/o"
