"""The blob store: a local directory, or an object store through fsspec whose local
directory is a cache. Each object-store test runs against both stores tunectl documents:
S3 (s3fs speaking the S3 API to moto's S3 server on loopback) and Cloud Storage (gcsfs
speaking the JSON API to tunectl's own Google emulator on loopback, mounted under /google
as `tunectl emulator` serves it, signing in with a service-account key file through the
emulator's OAuth token endpoint)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.blobs import BlobStore
from orchestrator.errors import BlobStoreError, DatasetError
from tests.helpers import serve_in_thread, service_account_file


@dataclass
class Remote:
    """An object store with an empty bucket ``datasets``: its URL scheme, the fsspec
    options that reach it (TUNECTL_BLOB_STORAGE_OPTIONS), and its admin base (GCS only)."""

    scheme: str
    options: dict[str, Any]
    admin: str = ""

    def url(self, prefix: str) -> str:
        return f"{self.scheme}://datasets/{prefix}"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    """An S3 endpoint on loopback with an empty bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="datasets")
    try:
        yield Remote("s3", {"endpoint_url": endpoint, "skip_instance_cache": True})
    finally:
        server.stop()


#: What gcsfs needs besides the endpoint: recent gcsfs first asks the Storage Control API
#: (gRPC) for each bucket's layout, which the emulator does not speak; with the default
#: retry_timeout every call would wait 60 s for it before going on with the JSON API.
GCS_OPTIONS = {"retry_timeout": 0, "skip_instance_cache": True}


@pytest.fixture
def gs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    """tunectl's Google emulator on loopback with an empty bucket; gcsfs signs in with
    application default credentials, a key file the emulator made (its token_uri is the
    emulator's)."""
    import httpx

    from orchestrator.providers import emulation
    from orchestrator.providers.vertex import emulator as google_emulator

    app = emulation.combined_app([emulation.EmulatorMount(
        "Google", google_emulator.PREFIX, "", google_emulator.create_app(buckets=["datasets"]))])
    with serve_in_thread(app) as root:
        base = f"{root}{google_emulator.PREFIX}"
        key = httpx.post(f"{base}/_emulator/service-accounts/keys", json={})
        key.raise_for_status()
        (tmp_path / "sa.json").write_text(key.text)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "sa.json"))
        yield Remote("gs", {"endpoint_url": base, **GCS_OPTIONS}, base)


@pytest.fixture(params=["s3", "gs"])
def remote(request: pytest.FixtureRequest) -> Remote:
    """Each object store in turn."""
    store: Remote = request.getfixturevalue(request.param)
    return store


def stats(remote: Remote) -> dict[str, Any]:
    """The Google emulator's counters (objects, uploads by kind, requests per route)."""
    import httpx

    return dict(httpx.get(f"{remote.admin}/_emulator/stats").json())


def test_a_local_store_is_content_addressed_and_refuses_what_is_too_big(
        tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b'{"messages": []}\n'
    sha = store.put_stream(io.BytesIO(data), "upload")

    assert sha == hashlib.sha256(data).hexdigest()
    assert store.open_path(sha).read_bytes() == data and store.exists(sha)
    with pytest.raises(DatasetError, match=r"upload: larger than 8 bytes; upload a smaller"):
        store.put_stream(io.BytesIO(b"x" * 9), "upload", limit=8)
    assert sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()) == [sha]


def test_an_object_store_is_shared_and_the_local_directory_is_only_a_cache(
        tmp_path: Path, remote: Remote) -> None:
    import fsspec

    api = BlobStore(tmp_path / "api-cache", remote.url("tunectl"), remote.options)
    worker = BlobStore(tmp_path / "worker-cache", remote.url("tunectl"), remote.options)
    data = b"line\n" * 1000
    sha = api.put_stream(io.BytesIO(data), "upload")
    api.put_stream(io.BytesIO(data), "again")  # stored once

    fs, _ = fsspec.core.url_to_fs(remote.url("tunectl"), **remote.options)
    assert fs.find("datasets/tunectl") == [f"datasets/tunectl/{sha[:2]}/{sha}"]
    assert fs.cat_file(f"datasets/tunectl/{sha[:2]}/{sha}") == data
    assert not worker.path(sha).exists() and worker.exists(sha)
    assert worker.open_path(sha).read_bytes() == data  # fetched once, then cached
    assert worker.path(sha).is_file()
    with pytest.raises(DatasetError, match=f"missing from {remote.scheme}://datasets/tunectl"):
        worker.open_path("0" * 64)
    assert not worker.exists("1" * 64)


def test_a_converted_dataset_reaches_the_object_store(tmp_path: Path, remote: Remote) -> None:
    """Validated (and converted) on one machine, uploaded to the provider from another."""
    validator = BlobStore(tmp_path / "validator-cache", remote.url("tunectl"), remote.options)
    uploader = BlobStore(tmp_path / "uploader-cache", remote.url("tunectl"), remote.options)
    converted = b'{"contents": []}\n' * 100

    sha, lines = validator.put_written(lambda path: path.write_bytes(converted))

    assert sha == hashlib.sha256(converted).hexdigest() and lines == len(converted)
    assert uploader.exists(sha) and uploader.open_path(sha).read_bytes() == converted
    assert sorted(p.name for p in (tmp_path / "validator-cache").rglob("*")
                  if p.is_file()) == [sha]  # no scratch file left behind


def test_a_changed_object_is_refused_not_used(tmp_path: Path, remote: Remote) -> None:
    import fsspec

    store = BlobStore(tmp_path / "a", remote.url("x"), remote.options)
    sha = store.put_stream(io.BytesIO(b"good\n"), "upload")
    fs, _ = fsspec.core.url_to_fs(remote.url("x"), **remote.options)
    fs.pipe(f"datasets/x/{sha[:2]}/{sha}", b"tampered\n")

    with pytest.raises(BlobStoreError, match="does not match its hash"):
        BlobStore(tmp_path / "b", remote.url("x"), remote.options).open_path(sha)
    assert not (tmp_path / "b" / sha[:2] / sha).exists()


# gcsfs hands aiohttp a chunk as bytes; aiohttp warns (a ResourceWarning, silent outside
# tests) that a body this big might hold up its event loop.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
def test_a_large_dataset_goes_to_cloud_storage_in_a_resumable_upload(
        tmp_path: Path, gs: Remote) -> None:
    """Past gcsfs's 5 MiB single-request limit a dataset goes up in a resumable session
    (the first request names the object, the bytes follow with Content-Range)."""
    data = b"".join(b'{"messages": [{"role": "user", "content": "%07d"}]}\n' % i
                    for i in range(120_000))
    assert len(data) > 5 << 20
    sha = BlobStore(tmp_path / "a", gs.url("big"), gs.options).put_stream(
        io.BytesIO(data), "upload")

    fetched = BlobStore(tmp_path / "b", gs.url("big"), gs.options).open_path(sha)

    assert fetched.read_bytes() == data
    counts = stats(gs)
    assert counts["uploads_resumable"] == 1 and "uploads_multipart" not in counts


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_an_unreachable_object_store_is_a_blob_store_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    if scheme == "s3":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
        options: dict[str, Any] = {
            "endpoint_url": "http://127.0.0.1:1", "skip_instance_cache": True,
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    else:  # nothing listens there: neither the token endpoint nor Cloud Storage
        key = service_account_file(tmp_path / "sa.json",
                                   token_uri="http://127.0.0.1:1/google/token")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        options = {"endpoint_url": "http://127.0.0.1:1/google", **GCS_OPTIONS}
    store = BlobStore(tmp_path / "cache", f"{scheme}://datasets/x", options)

    with pytest.raises(BlobStoreError,
                       match=rf"cannot store dataset \w+ at {scheme}://datasets/x") as caught:
        store.put_stream(io.BytesIO(b"x\n"), "upload")
    assert "\n" not in str(caught.value)
    with pytest.raises(BlobStoreError, match=rf"cannot reach {scheme}://datasets/x"):
        BlobStore(tmp_path / "other", f"{scheme}://datasets/x", options).exists("2" * 64)


def test_a_bucket_that_does_not_exist_is_a_blob_store_error(tmp_path: Path,
                                                            gs: Remote) -> None:
    store = BlobStore(tmp_path, "gs://no-such-bucket/x", gs.options)

    with pytest.raises(BlobStoreError, match=r"cannot store dataset \w+ at gs://no-such-bucket/x"
                       r": FileNotFoundError: \S+/b/no-such-bucket/o") as caught:
        store.put_stream(io.BytesIO(b"x\n"), "upload")
    assert "\n" not in str(caught.value)
