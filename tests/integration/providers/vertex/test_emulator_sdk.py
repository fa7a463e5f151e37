"""Conformance: Google's official clients against the emulator on a real uvicorn socket,
mounted under /google beside the other emulators exactly as `tunectl emulator` serves it.

- google-auth (with its requests transport) runs the service-account JWT flow against the
  emulator's token endpoint, for both clients below;
- google-cloud-storage uploads (multipart, and resumable in 256 KiB chunks), reads metadata,
  downloads and lists (prefix, delimiter, pages) through ``client_options={"api_endpoint":
  ...}``, and reads what tunectl's adapter uploaded;
- google-genai (``vertexai=True`` with ``HttpOptions(base_url=...)``) creates, gets and
  lists tuning jobs, and calls the tuned endpoint's generateContent.

Every answer must parse into the SDKs' own types. Time is the emulator's injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import google.auth.transport.requests
import httpx
import pytest
from google import genai
from google.cloud import storage
from google.genai import types
from google.oauth2 import service_account

from orchestrator.config import Settings
from orchestrator.providers import emulation, registry
from orchestrator.providers.dashscope import emulator as dashscope
from orchestrator.providers.openai import emulator as openai
from orchestrator.providers.vertex import auth
from orchestrator.providers.vertex import emulator as google_emulator
from orchestrator.providers.vertex.emulator import Scenario
from tests.helpers import Clock, serve_in_thread, service_account_file, service_account_key

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
LINE = ('{"contents": [{"role": "user", "parts": [{"text": "Where is my order %d?"}]}, '
        '{"role": "model", "parts": [{"text": "It ships tomorrow (%d)."}]}]}\n')
# google-genai flags its tunings module as experimental on every call.
pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def root(clock: Clock) -> Iterator[str]:
    """All emulators on one loopback port; Google's under /google with the test clock."""
    google = emulation.EmulatorMount("Google", google_emulator.PREFIX, "",
                                     google_emulator.create_app(Scenario(job_duration_s=60),
                                                                clock=clock.epoch))
    app = emulation.combined_app([dashscope.mount(job_duration_s=1, api_key=None),
                                  openai.mount(job_duration_s=1, api_key=None), google])
    with serve_in_thread(app) as url:
        httpx.post(f"{url}/google/_emulator/service-accounts",
                   json=service_account_key()).raise_for_status()
        yield url


@pytest.fixture
def base(root: str) -> str:
    return f"{root}/google"


@pytest.fixture
def key_file(base: str, tmp_path: Path) -> Path:
    return service_account_file(tmp_path / "sa.json", token_uri=f"{base}/token")


@pytest.fixture
def credentials(key_file: Path) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_file(str(key_file), scopes=SCOPES)


@pytest.fixture
def bucket(base: str, credentials: service_account.Credentials) -> storage.Bucket:
    client = storage.Client(project="tunectl-test", credentials=credentials,
                            client_options={"api_endpoint": base})
    return client.lookup_bucket("sdk-bucket") or client.create_bucket("sdk-bucket")


@pytest.fixture
def vertex(base: str, credentials: service_account.Credentials) -> Iterator[genai.Client]:
    # Closed after the test: its httpx pool's socket, left to the garbage collector, was an
    # unraisable ResourceWarning that failed the run now and then.
    with genai.Client(vertexai=True, project="tunectl-test", location="us-central1",
                      credentials=credentials,
                      http_options=types.HttpOptions(base_url=base, api_version="v1")) as client:
        yield client


class TestCloudStorage:
    def test_a_small_object_round_trips_with_its_metadata(self, bucket: storage.Bucket) -> None:
        blob = bucket.blob("data/small.jsonl")
        blob.metadata = {"owner": "sdk"}
        blob.upload_from_string(LINE % (1, 1), content_type="application/jsonl",
                                if_generation_match=0)

        stored = bucket.get_blob("data/small.jsonl")

        assert stored is not None and stored.size == len(LINE % (1, 1))
        assert stored.content_type == "application/jsonl" and stored.metadata == {"owner": "sdk"}
        assert stored.download_as_bytes() == (LINE % (1, 1)).encode()
        with pytest.raises(Exception, match="412"):
            bucket.blob("data/small.jsonl").upload_from_string("x", if_generation_match=0)

    def test_a_large_object_goes_up_in_resumable_chunks(self, bucket: storage.Bucket,
                                                        tmp_path: Path) -> None:
        path = tmp_path / "big.jsonl"
        path.write_text("".join(LINE % (i, i) for i in range(6000)))
        blob = bucket.blob("data/big.jsonl", chunk_size=256 << 10)

        blob.upload_from_filename(str(path))

        assert blob.size == path.stat().st_size
        assert bucket.blob("data/big.jsonl").download_as_bytes() == path.read_bytes()

    def test_lists_come_by_prefix_and_delimiter_in_pages(self, bucket: storage.Bucket
                                                         ) -> None:
        for name in ("ls/a/b", "ls/a/c", "ls/d", "ls/e", "ls/e/f", "ls/e/g/h"):
            bucket.blob(name).upload_from_string(LINE % (1, 1))
        client = bucket.client

        everything = [b.name for b in client.list_blobs("sdk-bucket", prefix="ls/",
                                                        page_size=2)]
        top = client.list_blobs("sdk-bucket", prefix="ls/", delimiter="/", page_size=1)
        top_names = [b.name for b in top]
        pages = client.list_blobs("sdk-bucket", prefix="ls/", page_size=2).pages
        in_e = bucket.list_blobs(prefix="ls/e/", delimiter="/")
        in_e_names = [b.name for b in in_e]
        capped = [b.name for b in bucket.list_blobs(prefix="ls/", max_results=3)]

        assert everything == ["ls/a/b", "ls/a/c", "ls/d", "ls/e", "ls/e/f", "ls/e/g/h"]
        assert top_names == ["ls/d", "ls/e"] and top.prefixes == {"ls/a/", "ls/e/"}
        assert [page.num_items for page in pages] == [2, 2, 2]
        assert in_e_names == ["ls/e/f"] and in_e.prefixes == {"ls/e/g/"}
        assert capped == ["ls/a/b", "ls/a/c", "ls/d"]
        assert list(bucket.list_blobs(prefix="ls/none/")) == []

    def test_the_sdk_reads_what_tunectl_uploaded(self, bucket: storage.Bucket, base: str,
                                                 key_file: Path, tmp_path: Path) -> None:
        auth.forget()
        settings = Settings(data_dir=tmp_path, vertex_base_url=base, gcs_base_url=base,
                            gcs_bucket="sdk-bucket", gcs_resumable_threshold_bytes=1000,
                            gcs_chunk_bytes=256 << 10, google_application_credentials=key_file)
        dataset = tmp_path / "train.jsonl"
        dataset.write_text("".join(LINE % (i, i) for i in range(3000)))
        with httpx.Client() as http:
            client = registry.get("vertex").connect(settings, http)
            uploaded = client.upload_file(dataset, "e" * 64)

        name = uploaded.id.removeprefix("gs://sdk-bucket/")
        stored = bucket.get_blob(name)
        assert stored is not None and stored.metadata == {"tunectl-sha256": "e" * 64}
        assert stored.download_as_bytes() == dataset.read_bytes()


class TestGenAI:
    def test_a_tuning_job_is_created_read_listed_and_its_endpoint_answers(
            self, vertex: genai.Client, bucket: storage.Bucket, clock: Clock) -> None:
        bucket.blob("train.jsonl").upload_from_string(
            "".join(LINE % (i, i) for i in range(20)))

        job = vertex.tunings.tune(
            base_model="gemini-2.5-flash",
            training_dataset=types.TuningDataset(gcs_uri="gs://sdk-bucket/train.jsonl"),
            config=types.CreateTuningJobConfig(epoch_count=2, tuned_model_display_name="sdk",
                                               adapter_size=types.AdapterSize.ADAPTER_SIZE_FOUR))
        assert job.name is not None and job.state == types.JobState.JOB_STATE_PENDING
        clock.advance(60)
        done = vertex.tunings.get(name=job.name)
        listed = [j.name for j in vertex.tunings.list(config={"page_size": 10})]

        assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.has_succeeded
        assert done.tuned_model is not None and done.tuned_model.endpoint is not None
        assert done.tuned_model.model is not None and done.tuned_model.model.endswith("@1")
        assert done.tuned_model_display_name == "sdk"
        assert job.name in listed
        assert done.supervised_tuning_spec is not None
        hyper = done.supervised_tuning_spec.hyper_parameters
        assert hyper is not None and hyper.epoch_count == 2  # sent back as "2" (int64)
        answer = vertex.models.generate_content(model=done.tuned_model.endpoint,
                                                contents="Where is my order 7?")
        assert answer.text == "It ships tomorrow (7)."

    def test_a_missing_job_is_a_not_found_error_the_sdk_reads(self, vertex: genai.Client,
                                                              ) -> None:
        from google.genai import errors

        with pytest.raises(errors.ClientError) as caught:
            vertex.tunings.get(name="projects/tunectl-test/locations/us-central1/tuningJobs/1")

        assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"

    def test_tokens_come_from_the_emulator_token_endpoint(
            self, root: str, credentials: service_account.Credentials) -> None:
        before = json.loads(httpx.get(f"{root}/google/_emulator/stats").text)

        credentials.refresh(google.auth.transport.requests.Request())

        stats = json.loads(httpx.get(f"{root}/google/_emulator/stats").text)
        assert stats["tokens_issued"] == before.get("tokens_issued", 0) + 1
        assert stats["service_accounts"] == 1
        assert credentials.token is not None and credentials.token.startswith("ya29.")
