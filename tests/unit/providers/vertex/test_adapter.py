"""The Vertex adapter against the in-process emulator: Cloud Storage uploads (multipart,
resumable, resumed, deduplicated), tuning jobs found by label, errors, and google-auth's
service-account flow with tokens refreshed before expiry and after a 401."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import httpx
import pytest
from fastapi.testclient import TestClient
from google.auth import identity_pool, impersonated_credentials

from orchestrator.blobs import BlobStore
from orchestrator.config import Settings
from orchestrator.errors import (
    MissingCredential,
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from orchestrator.providers import base, http, registry
from orchestrator.providers.base import JobRequest, RemoteStatus
from orchestrator.providers.http import shared_client
from orchestrator.providers.vertex import adapter, auth, gcs
from orchestrator.providers.vertex.adapter import VertexClient
from orchestrator.providers.vertex.emulator import Scenario
from tests.helpers import GOOGLE_BASE, Clock, in_process_emulator, service_account_file

GEMINI_LINE = ('{"contents": [{"role": "user", "parts": [{"text": "hi %d"}]}, '
               '{"role": "model", "parts": [{"text": "hello %d"}]}]}\n')


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emulator(clock: Clock) -> Iterator[TestClient]:
    auth.forget()
    with in_process_emulator(clock, google=Scenario(job_duration_s=10)) as client:
        yield client


def connect(settings: Settings, **options: str) -> VertexClient:
    client = base.connect(registry.get("vertex"), settings, shared_client(settings), options)
    assert isinstance(client, VertexClient)
    return client


@pytest.fixture
def vertex(settings: Settings, emulator: TestClient) -> VertexClient:
    return connect(settings)


def dataset(path: Path, lines: int) -> Path:
    path.write_text("".join(GEMINI_LINE % (i, i) for i in range(lines)))
    return path


def stored(settings: Settings, path: Path) -> str:
    """Put a dataset in the blob store, as submit does; its hash."""
    return BlobStore(settings.blob_dir).put_file(path)


def media(emulator: TestClient, uri: str) -> bytes:
    bucket, name = uri.removeprefix("gs://").split("/", 1)
    return emulator.get(f"/google/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}",
                        params={"alt": "media"}).content


def stats(emulator: TestClient) -> dict[str, Any]:
    return dict(emulator.get("/google/_emulator/stats").json())


def scenario(emulator: TestClient, **knobs: Any) -> None:
    emulator.put("/google/_emulator/scenario", json=Scenario(**knobs).model_dump()
                 ).raise_for_status()


def big(settings: Settings) -> VertexClient:
    """A client that sends anything over 1000 bytes in resumable chunks of 256 KiB."""
    return connect(settings.model_copy(update={"gcs_resumable_threshold_bytes": 1000,
                                               "gcs_chunk_bytes": 256 << 10}))


def multipart_upload(emulator: TestClient, uri: str, content: bytes, sha: str) -> None:
    """Store an object the way tunectl did before it sent an MD5 (nothing is checked)."""
    bucket, name = uri.removeprefix("gs://").split("/", 1)
    metadata = json.dumps({"name": name, "metadata": {"tunectl-sha256": sha}})
    body = (f"--b\r\ncontent-type: application/json\r\n\r\n{metadata}\r\n--b\r\n"
            "content-type: application/jsonl\r\n\r\n").encode() + content + b"\r\n--b--\r\n"
    emulator.post(f"/google/upload/storage/v1/b/{bucket}/o", params={"uploadType": "multipart"},
                  content=body, headers={"content-type": "multipart/related; boundary=b"}
                  ).raise_for_status()


#: Workload Identity Federation and impersonation files as gcloud writes them.
EXTERNAL: dict[str, Any] = {
    "type": "external_account",
    "audience": "//iam.googleapis.com/locations/global/workforcePools/pool/providers/oidc",
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "token_url": "https://sts.googleapis.com/v1/token"}
IMPERSONATED: dict[str, Any] = {
    "type": "impersonated_service_account",
    "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/"
                                         "-/serviceAccounts/tuner@proj-1234.iam."
                                         "gserviceaccount.com:generateAccessToken",
    "source_credentials": {"type": "authorized_user", "client_id": "id",
                           "client_secret": "secret", "refresh_token": "refresh"}}


IMPERSONATION_URL = (f"{GOOGLE_BASE}/iamcredentials/v1/projects/-/serviceAccounts/"
                     "tuner@proj-1234.iam.gserviceaccount.com:generateAccessToken")


def request(job_id: str, training: str) -> JobRequest:
    return JobRequest(job_id=job_id, base_model="gemini-2.5-flash", method="sft",
                      training_file_id=training, validation_file_id=None,
                      hyperparameters={"epoch_count": 2}, suffix=None, labels={})


class TestUploads:
    def test_a_small_dataset_goes_in_one_multipart_request_and_is_found_again(
            self, vertex: VertexClient, emulator: TestClient, tmp_path: Path,
            settings: Settings) -> None:
        path = dataset(tmp_path / "d.jsonl", 3)
        sha = stored(settings, path)

        assert vertex.find_file(sha) is None
        uploaded = vertex.upload_file(path, sha)
        again = vertex.upload_file(path, sha)  # a retry after the first one landed

        assert uploaded.id == f"gs://tunectl-test-data/tunectl/tunectl-{sha}.jsonl"
        assert uploaded.bytes == path.stat().st_size
        assert again == uploaded == vertex.find_file(sha)
        assert vertex.file_exists(uploaded.id)
        assert not vertex.file_exists(f"gs://tunectl-test-data/tunectl/tunectl-{'2' * 64}.jsonl")
        assert stats(emulator)["uploads_multipart"] == 1
        content = emulator.get(f"/google/storage/v1/b/tunectl-test-data/o/tunectl%2F"
                               f"tunectl-{sha}.jsonl", params={"alt": "media"}).content
        assert content == path.read_bytes()

    def test_a_large_dataset_goes_in_resumable_chunks_that_survive_a_failed_chunk(
            self, settings: Settings, emulator: TestClient, tmp_path: Path) -> None:
        settings = settings.model_copy(update={"gcs_resumable_threshold_bytes": 1000,
                                               "gcs_chunk_bytes": 256 << 10})
        vertex = connect(settings, bucket="other-bucket", prefix="big")
        path = dataset(tmp_path / "big.jsonl", 9000)  # ~900 KB: four chunks
        scenario(emulator, server_errors={"count": 1, "status": 503, "methods": ["PUT"],
                                          "routes": "^/upload/"})

        uploaded = vertex.upload_file(path, "3" * 64)

        assert uploaded.id == f"gs://other-bucket/big/tunectl-{'3' * 64}.jsonl"
        counted = stats(emulator)
        assert counted["uploads_resumable"] == 1 and counted["server_errors"] == 1
        content = emulator.get(f"/google/storage/v1/b/other-bucket/o/big%2F"
                               f"tunectl-{'3' * 64}.jsonl", params={"alt": "media"}).content
        assert content == path.read_bytes()

    def test_an_object_of_that_name_not_uploaded_by_tunectl_is_refused(
            self, vertex: VertexClient, emulator: TestClient, tmp_path: Path,
            settings: Settings) -> None:
        path = dataset(tmp_path / "d.jsonl", 2)
        sha = stored(settings, path)
        emulator.post("/google/upload/storage/v1/b/tunectl-test-data/o",
                      params={"uploadType": "media", "name": f"tunectl/tunectl-{sha}.jsonl"},
                      content=b"planted").raise_for_status()

        assert vertex.find_file(sha) is None
        with pytest.raises(ProviderRejected, match="not uploaded by tunectl"):
            vertex.upload_file(path, sha)

    def test_a_copy_of_ours_that_differs_from_the_local_file_is_replaced(
            self, vertex: VertexClient, emulator: TestClient, tmp_path: Path,
            settings: Settings) -> None:
        """An upload from before Cloud Storage checked the MD5 kept corrupted bytes."""
        path = dataset(tmp_path / "d.jsonl", 4)
        sha = stored(settings, path)
        uri = f"gs://tunectl-test-data/tunectl/tunectl-{sha}.jsonl"
        multipart_upload(emulator, uri, path.read_bytes()[:-5] + b"oops\n", sha)

        assert vertex.find_file(sha) is None  # the step's look before uploading
        uploaded = vertex.upload_file(path, sha)

        assert uploaded.id == uri and media(emulator, uri) == path.read_bytes()
        assert stats(emulator)["objects_deleted"] == 1
        assert vertex.find_file(sha) == uploaded

    @pytest.mark.parametrize("threshold", [pytest.param(1 << 20, id="multipart"),
                                           pytest.param(1000, id="resumable")])
    def test_bytes_changed_on_the_way_store_nothing_and_are_retried(
            self, settings: Settings, emulator: TestClient, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, threshold: int) -> None:
        vertex = connect(settings.model_copy(update={"gcs_resumable_threshold_bytes": threshold,
                                                     "gcs_chunk_bytes": 256 << 10}))
        path = dataset(tmp_path / "d.jsonl", 3000)
        sha = stored(settings, path)
        real = vertex.storage._send

        def corrupting(operation: str, method: str, url: str, **kwargs: Any) -> Any:
            if operation in ("upload file", "upload chunk"):
                kwargs["content"] = kwargs["content"].replace(b"hello 7", b"HELLO 7")
            return real(operation, method, url, **kwargs)

        monkeypatch.setattr(vertex.storage, "_send", corrupting)
        with pytest.raises(ProviderUnavailable, match="received other bytes"):
            vertex.upload_file(path, sha)
        assert vertex.find_file(sha) is None
        monkeypatch.setattr(vertex.storage, "_send", real)

        assert media(emulator, vertex.upload_file(path, sha).id) == path.read_bytes()

    def test_a_resumable_upload_resumes_after_part_of_a_chunk_was_kept(
            self, settings: Settings, emulator: TestClient, tmp_path: Path) -> None:
        vertex = big(settings)
        path = dataset(tmp_path / "d.jsonl", 9000)
        scenario(emulator, partial_chunks=2, partial_chunk_bytes=256 << 10)

        uploaded = vertex.upload_file(path, stored(settings, path))

        assert media(emulator, uploaded.id) == path.read_bytes()

    def test_a_server_that_keeps_acknowledging_nothing_is_given_up_on(
            self, settings: Settings, emulator: TestClient, tmp_path: Path) -> None:
        vertex = big(settings)
        path = dataset(tmp_path / "d.jsonl", 9000)
        scenario(emulator, partial_chunks=1000, partial_chunk_bytes=0)

        with pytest.raises(ProviderUnavailable, match="acknowledged nothing new 10 times"):
            vertex.upload_file(path, stored(settings, path))
        assert stats(emulator)["requests"]["PUT /upload/storage/v1/b/{bucket}/o"] == 10

    def test_the_upload_deadline_is_checked_on_every_round_trip(
            self, settings: Settings, emulator: TestClient, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """Status queries read nothing from the file, yet each one looks at the deadline."""
        vertex = big(settings)
        path = dataset(tmp_path / "d.jsonl", 9000)
        scenario(emulator, server_errors={"count": 1000, "status": 503, "methods": ["PUT"],
                                          "routes": "^/upload/"})
        monkeypatch.setattr(gcs, "MAX_STALLS", 1000)
        ticks = iter(range(0, 10**6, 100))
        monkeypatch.setattr(http.time, "monotonic", lambda: float(next(ticks)))

        with pytest.raises(ProviderUnavailable, match="did not finish within"):
            vertex.upload_file(path, stored(settings, path))
        assert stats(emulator)["server_errors"] < 20

    @pytest.mark.parametrize("how", ["expired-410", "unknown-404"])
    def test_a_lost_session_is_replaced_by_a_new_one(
            self, settings: Settings, emulator: TestClient, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, how: str) -> None:
        vertex = big(settings)
        path = dataset(tmp_path / "d.jsonl", 9000)
        if how == "expired-410":
            scenario(emulator, expire_sessions=1)
        else:
            real, lost = vertex.storage._send, []

            def forgetful(operation: str, method: str, url: str, **kwargs: Any) -> Any:
                if operation == "upload chunk" and not lost:
                    lost.append(url)
                    url = url.replace("upload_id=", "upload_id=forgotten")
                return real(operation, method, url, **kwargs)

            monkeypatch.setattr(vertex.storage, "_send", forgetful)

        uploaded = vertex.upload_file(path, stored(settings, path))

        assert media(emulator, uploaded.id) == path.read_bytes()
        assert stats(emulator)["requests"]["POST /upload/storage/v1/b/{bucket}/o"] == 2

    def test_the_account_is_per_bucket_and_prefix(self, settings: Settings,
                                                  emulator: TestClient) -> None:
        assert connect(settings).account != connect(settings, bucket="bucket-2").account
        assert connect(settings).account != connect(settings, prefix="x/").account
        assert connect(settings).account == connect(settings).account


class TestTuningJobs:
    def test_a_retried_submit_finds_its_job_by_label_across_pages(
            self, vertex: VertexClient, emulator: TestClient, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        uri = vertex.upload_file(dataset(tmp_path / "d.jsonl", 2), "5" * 64).id
        created = [vertex.create_job(request(f"job_{i}", uri)) for i in range(3)]
        monkeypatch.setattr(adapter, "PAGE_SIZE", 1)

        assert vertex.find_job("job_0") == created[0]
        assert vertex.find_job("JOB_2") == created[2]  # label values are lower-case
        assert vertex.find_job("job_9") is None
        assert created[0].provider_status == "JOB_STATE_PENDING"

    def test_a_job_runs_to_its_tuned_endpoint_and_answers(
            self, vertex: VertexClient, clock: Clock, tmp_path: Path) -> None:
        uri = vertex.upload_file(dataset(tmp_path / "d.jsonl", 2), "6" * 64).id
        name = vertex.create_job(request("job_a", uri)).id
        clock.advance(5)
        assert vertex.get_job(name).provider_status == "JOB_STATE_RUNNING"
        clock.advance(5)

        done = vertex.get_job(name)

        assert done.status is RemoteStatus.SUCCEEDED and done.model_ref is not None
        assert vertex.ask(done.model_ref, "hi 1") == "hello 1"  # what it was tuned on
        assert [e.message for e in vertex.list_events(name)] == [
            "tuning job created", "tuning started", "ended JOB_STATE_SUCCEEDED"]

    def test_a_cancel_goes_through_cancelling(self, vertex: VertexClient, clock: Clock,
                                              tmp_path: Path) -> None:
        uri = vertex.upload_file(dataset(tmp_path / "d.jsonl", 2), "7" * 64).id
        name = vertex.create_job(request("job_c", uri)).id

        assert vertex.cancel_job(name).provider_status == "JOB_STATE_CANCELLING"
        clock.advance(1)
        assert vertex.get_job(name).status is RemoteStatus.CANCELLED
        with pytest.raises(ProviderRejected, match="FAILED_PRECONDITION"):
            vertex.cancel_job(name)

    @pytest.mark.parametrize(("knobs", "cls"), [
        pytest.param({"throttle": {"count": 1, "routes": "tuningJobs"}}, RateLimited,
                     id="429-resource-exhausted"),
        pytest.param({"server_errors": {"count": 1, "status": 503, "routes": "tuningJobs"}},
                     ProviderUnavailable, id="503-unavailable"),
    ])
    def test_quota_and_outages_are_retryable(self, vertex: VertexClient, emulator: TestClient,
                                             knobs: dict[str, Any], cls: type[Exception]) -> None:
        scenario(emulator, **knobs)

        with pytest.raises(cls):
            vertex.find_job("job_x")
        assert vertex.find_job("job_x") is None  # the next call goes through

    def test_a_dataset_that_is_not_in_the_bucket_is_rejected(self, vertex: VertexClient) -> None:
        with pytest.raises(ProviderRejected, match="does not exist"):
            vertex.create_job(request("job_m", "gs://tunectl-test-data/missing.jsonl"))


class TestAuth:
    def test_the_service_account_flow_gets_one_token_for_many_calls(
            self, vertex: VertexClient, emulator: TestClient) -> None:
        for _ in range(3):
            vertex.find_job("job_x")

        assert stats(emulator)["tokens_issued"] == 1

    def test_a_token_close_to_expiry_is_refreshed_before_it_is_used(
            self, vertex: VertexClient, emulator: TestClient, settings: Settings) -> None:
        vertex.find_job("job_x")
        creds = auth.credentials(settings.google_application_credentials,
                                 auth.HttpxRequest(shared_client(settings))).credentials
        assert creds.expiry is not None
        creds.expiry = creds.expiry.replace(tzinfo=None) - timedelta(seconds=3600 - 60)

        vertex.find_job("job_x")

        counted = stats(emulator)
        assert counted["tokens_issued"] == 2
        assert counted.get("tokens_refused", 0) == 0  # refreshed before, not after a 401

    def test_a_token_that_expired_at_the_server_is_refreshed_after_its_401(
            self, vertex: VertexClient, emulator: TestClient, clock: Clock) -> None:
        """google-auth still thinks the token good; the server's clock says it expired."""
        vertex.find_job("job_x")
        clock.advance(3601)

        assert vertex.find_job("job_x") is None

        counted = stats(emulator)
        assert counted["tokens_issued"] == 2 and counted["tokens_refused"] == 1

    def test_an_upload_refused_for_an_expired_token_is_sent_again_whole(
            self, vertex: VertexClient, emulator: TestClient, clock: Clock,
            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The multipart POST itself meets the 401: its body must go again, whole."""
        vertex.find_job("job_x")
        clock.advance(3601)
        path = dataset(tmp_path / "d.jsonl", 5)
        monkeypatch.setattr(vertex.storage, "find", lambda sha256, local: None)  # no GET first

        uploaded = vertex.upload_file(path, "8" * 64)

        assert stats(emulator)["tokens_refused"] == 1
        bucket, name = uploaded.id.removeprefix("gs://").split("/", 1)
        assert emulator.get(f"/google/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}",
                            params={"alt": "media"}).content == path.read_bytes()

    def test_a_key_the_server_does_not_know_is_a_permanent_auth_error(
            self, settings: Settings, emulator: TestClient, tmp_path: Path) -> None:
        key = json.loads(Path(str(settings.google_application_credentials)).read_text())
        other = tmp_path / "other.json"
        other.write_text(json.dumps({**key, "private_key_id": "unknown-key"}))
        vertex = connect(settings.model_copy(update={"google_application_credentials": other}))

        with pytest.raises(ProviderAuthError, match="invalid_grant"):
            vertex.find_job("job_x")

    @pytest.mark.parametrize(("content", "words"), [
        pytest.param("{not json", "not a readable JSON credentials file", id="not-json"),
        pytest.param(json.dumps({**EXTERNAL, "credential_source": {
            "executable": {"command": "/usr/bin/fetch-token"}}}), "would run a command",
            id="external-account-that-runs-a-command"),
        pytest.param(json.dumps({**IMPERSONATED, "source_credentials": {
            **EXTERNAL, "credential_source": {"executable": {"command": "x"}}}}),
            "would run a command", id="impersonation-whose-source-runs-a-command"),
        pytest.param('{"type": "gdch_service_account"}', "not 'gdch_service_account'",
                     id="another-kind"),
        pytest.param('{"type": "service_account"}', "incomplete", id="incomplete"),
        pytest.param('{"type": "external_account"}', "incomplete", id="incomplete-external"),
    ])
    def test_a_bad_key_file_is_one_clear_line(self, settings: Settings, emulator: TestClient,
                                              tmp_path: Path, content: str, words: str) -> None:
        bad = tmp_path / "bad.json"
        bad.write_text(content)

        with pytest.raises(MissingCredential, match=words) as caught:
            connect(settings.model_copy(update={"google_application_credentials": bad}))
        assert "GOOGLE_APPLICATION_CREDENTIALS=" in str(caught.value)
        assert "\n" not in str(caught.value)

    @pytest.mark.parametrize("impersonate", [pytest.param(False, id="the-sts-token"),
                                             pytest.param(True, id="then-impersonating")])
    def test_workload_identity_federation_gets_its_tokens_from_sts(
            self, settings: Settings, emulator: TestClient, tmp_path: Path,
            impersonate: bool) -> None:
        """google-auth exchanges the file's subject token at STS (and, with an impersonation
        URL, that token for the service account's at IAM Credentials)."""
        (tmp_path / "oidc-token").write_text("eyJhbGciOi.subject.token")
        info: dict[str, Any] = {**EXTERNAL, "token_url": f"{GOOGLE_BASE}/sts/v1/token",
                                "credential_source": {"file": str(tmp_path / "oidc-token")}}
        if impersonate:
            info["service_account_impersonation_url"] = IMPERSONATION_URL
        path = tmp_path / "federation.json"
        path.write_text(json.dumps(info))

        vertex = connect(settings.model_copy(update={"google_application_credentials": path,
                                                     "vertex_project": "proj-1234"}))

        assert vertex.find_job("job_x") is None
        counted = stats(emulator)
        assert counted["sts_exchanges"] == 1
        assert counted.get("impersonations", 0) == int(impersonate)
        assert isinstance(auth.credentials(path, auth.HttpxRequest(shared_client(settings)))
                          .credentials, identity_pool.Credentials)

    def test_an_impersonated_service_account_gets_its_tokens_from_iam_credentials(
            self, settings: Settings, emulator: TestClient, tmp_path: Path) -> None:
        """Such a file names only the account: google-auth calls Google's IAM Credentials
        host, which this test's transport sends to the emulator."""
        key = json.loads(Path(str(settings.google_application_credentials)).read_text())
        path = tmp_path / "impersonated.json"
        path.write_text(json.dumps({**IMPERSONATED, "source_credentials": key}))

        def to_emulator(request: httpx.Request) -> httpx.Response:
            url = request.url
            if url.host == "iamcredentials.googleapis.com":
                url = httpx.URL(f"{GOOGLE_BASE}/iamcredentials{url.path}")
            answer = emulator.request(request.method, str(url), headers=request.headers,
                                      content=request.content)
            return httpx.Response(answer.status_code, headers=answer.headers,
                                  content=answer.content)

        with httpx.Client(transport=httpx.MockTransport(to_emulator)) as http:
            vertex = base.connect(registry.get("vertex"), settings.model_copy(update={
                "google_application_credentials": path, "vertex_project": "proj-1234"}), http)

            assert vertex.find_job("job_x") is None
        counted = stats(emulator)
        assert counted["tokens_issued"] == 1 and counted["impersonations"] == 1
        assert isinstance(auth.credentials(path, auth.HttpxRequest(shared_client(settings)))
                          .credentials, impersonated_credentials.Credentials)

    def test_application_default_credentials_are_read_again_when_the_file_changes(
            self, settings: Settings, emulator: TestClient, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """`gcloud auth application-default login` again, as another account."""
        gcloud = tmp_path / "gcloud"
        gcloud.mkdir()
        adc = service_account_file(gcloud / "application_default_credentials.json")
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))
        no_key = settings.model_copy(update={"google_application_credentials": None})
        first = connect(no_key)
        key = json.loads(adc.read_text())
        adc.write_text(json.dumps({**key, "project_id": "proj-other"}))
        os.utime(adc, ns=(adc.stat().st_atime_ns, adc.stat().st_mtime_ns + 10**9))

        assert first.project == "tunectl-test" and connect(no_key).project == "proj-other"

    def test_application_default_credentials_come_from_gcloud_s_file(
            self, settings: Settings, emulator: TestClient, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        gcloud = tmp_path / "gcloud"
        gcloud.mkdir()
        service_account_file(gcloud / "application_default_credentials.json")
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        vertex = connect(settings.model_copy(update={"google_application_credentials": None}))

        assert vertex.project == "tunectl-test"  # the key file's project
        assert vertex.find_job("job_x") is None
        assert stats(emulator)["tokens_issued"] == 1

    def test_no_project_or_bucket_is_a_clear_error(self, settings: Settings,
                                                   emulator: TestClient) -> None:
        with pytest.raises(MissingCredential, match="TUNECTL_GCS_BUCKET"):
            connect(settings.model_copy(update={"gcs_bucket": None}))


@pytest.mark.parametrize(("update", "words"), [
    pytest.param({"vertex_location": "evil.example.com/#"}, "Vertex location must be",
                 id="location-from-the-environment"),
    pytest.param({"gcs_bucket": "gs://x"}, "Vertex bucket must be", id="bucket-uri"),
])
def test_settings_are_checked_like_spec_options(settings: Settings, emulator: TestClient,
                                                update: dict[str, str], words: str) -> None:
    with pytest.raises(MissingCredential, match=words):
        connect(settings.model_copy(update=update))


def test_a_resumable_session_on_another_host_gets_no_token(
        settings: Settings, emulator: TestClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A session URL is where the chunks, and the access token, go."""
    vertex = connect(settings.model_copy(update={"gcs_resumable_threshold_bytes": 10}))
    real = vertex._send

    def redirected(operation: str, method: str, url: str, **kwargs: Any) -> Any:
        response = real(operation, method, url, **kwargs)
        if operation == "start upload":
            response.headers["location"] = "https://collector.example/upload?upload_id=1"
        return response

    monkeypatch.setattr(vertex.storage, "_send", redirected)

    with pytest.raises(ProviderUnavailable, match="not on the Cloud Storage host"):
        vertex.upload_file(dataset(tmp_path / "d.jsonl", 3), "9" * 64)


class TestWhereCallsGo:
    """Google's real hosts (no base URL override), seen through a recording transport."""

    @pytest.fixture
    def seen(self) -> list[httpx.Request]:
        return []

    @pytest.fixture
    def google(self, seen: list[httpx.Request], tmp_path: Path) -> VertexClient:
        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            if request.url.path.endswith(":generateContent"):
                return httpx.Response(200, json={"candidates": [{"content": {"parts": [
                    {"text": "hi"}]}}]})
            return httpx.Response(200, json={"name": request.url.path.removeprefix("/v1/")
                                             .removesuffix(":cancel"),
                                             "state": "JOB_STATE_RUNNING"})

        creds = google.oauth2.credentials.Credentials(token="ya29.test")
        storage = {"base_url": "https://storage.googleapis.com", "bucket": "b-1",
                   "prefix": "", "resumable_threshold": 1, "chunk_bytes": 256 << 10,
                   "deadline_s": 60.0}
        return VertexClient(httpx.Client(transport=httpx.MockTransport(answer)),
                            auth.GoogleAuth(creds, None), project="proj-1234",
                            location="us-central1", base_url=None, storage=storage,
                            local=lambda sha: tmp_path / sha)

    def test_a_job_is_asked_about_at_its_own_location_not_the_configured_one(
            self, google: VertexClient, seen: list[httpx.Request]) -> None:
        name = "projects/proj-1234/locations/europe-west4/tuningJobs/42"

        google.get_job(name)
        google.cancel_job(name)
        google.list_events(name)

        assert {r.url.host for r in seen} == {"europe-west4-aiplatform.googleapis.com"}

    def test_the_tuned_endpoint_is_called_where_its_name_says(
            self, google: VertexClient, seen: list[httpx.Request]) -> None:
        ref = {"endpoint": "projects/proj-1234/locations/asia-east1/endpoints/7",
               "vertex_location": "evil.example#"}

        assert google.ask(ref, "hello") == "hi"
        assert seen[0].url.host == "asia-east1-aiplatform.googleapis.com"

    @pytest.mark.parametrize("endpoint", [
        "projects/proj-1234/locations/evil.example#/endpoints/7",
        "projects/proj-1234/locations/evil.example/x/endpoints/7", ""])
    def test_an_endpoint_that_would_name_another_host_is_never_called(
            self, google: VertexClient, seen: list[httpx.Request], endpoint: str) -> None:
        """The bearer token would go with it."""
        with pytest.raises(ProviderRejected, match="not an endpoint name"):
            google.ask({"endpoint": endpoint, "vertex_location": "us-central1"}, "hello")
        assert seen == []


def test_a_server_that_refuses_the_label_filter_is_searched_page_by_page(
        vertex: VertexClient, emulator: TestClient, tmp_path: Path, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = dataset(tmp_path / "d.jsonl", 2)
    uri = vertex.upload_file(path, stored(settings, path)).id
    created = [vertex.create_job(request(f"job_{i}", uri)) for i in range(3)]
    scenario(emulator, refuse_filters=True)
    monkeypatch.setattr(adapter, "PAGE_SIZE", 1)

    assert vertex.find_job("job_0") == created[0]
    assert vertex.find_job("job_9") is None


def test_a_token_endpoint_that_fails_once_is_retried_and_one_that_keeps_failing_is_retryable(
        vertex: VertexClient, emulator: TestClient, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth._exponential_backoff as backoff

    monkeypatch.setattr(backoff.time, "sleep", lambda seconds: None)  # google-auth's backoff
    scenario(emulator, server_errors={"count": 1, "status": 503, "routes": "^/token"})
    assert vertex.find_job("job_x") is None  # google-auth asks the token endpoint again
    auth.forget()
    again = connect(settings)
    scenario(emulator, server_errors={"count": 100, "status": 503, "routes": "^/token"})

    with pytest.raises(ProviderUnavailable, match="Google refused the credentials"):
        again.find_job("job_x")
