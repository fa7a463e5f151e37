"""The blob store: a local directory, or an object store through fsspec (S3 here: s3fs
speaking the S3 API to moto's S3 server on loopback), whose local directory is a cache."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.blobs import BlobStore
from orchestrator.errors import BlobStoreError, DatasetError


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An S3 endpoint on loopback with an empty bucket; yields the fsspec options."""
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
        yield {"endpoint_url": endpoint, "skip_instance_cache": True}
    finally:
        server.stop()


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
        tmp_path: Path, s3: dict[str, Any]) -> None:
    api = BlobStore(tmp_path / "api-cache", "s3://datasets/tunectl", s3)
    worker = BlobStore(tmp_path / "worker-cache", "s3://datasets/tunectl", s3)
    data = b"line\n" * 1000
    sha = api.put_stream(io.BytesIO(data), "upload")

    assert not worker.path(sha).exists() and worker.exists(sha)
    assert worker.open_path(sha).read_bytes() == data  # fetched once, then cached
    assert worker.path(sha).is_file()
    with pytest.raises(DatasetError, match="missing from s3://datasets/tunectl"):
        worker.open_path("0" * 64)


def test_a_converted_dataset_reaches_the_object_store(tmp_path: Path,
                                                      s3: dict[str, Any]) -> None:
    """Validated (and converted) on one machine, uploaded to the provider from another."""
    validator = BlobStore(tmp_path / "validator-cache", "s3://datasets/tunectl", s3)
    uploader = BlobStore(tmp_path / "uploader-cache", "s3://datasets/tunectl", s3)
    converted = b'{"contents": []}\n' * 100

    sha, lines = validator.put_written(lambda path: path.write_bytes(converted))

    assert sha == hashlib.sha256(converted).hexdigest() and lines == len(converted)
    assert uploader.exists(sha) and uploader.open_path(sha).read_bytes() == converted
    assert sorted(p.name for p in (tmp_path / "validator-cache").rglob("*")
                  if p.is_file()) == [sha]  # no scratch file left behind


def test_a_changed_object_is_refused_not_used(tmp_path: Path, s3: dict[str, Any]) -> None:
    import fsspec

    store = BlobStore(tmp_path / "a", "s3://datasets/x", s3)
    sha = store.put_stream(io.BytesIO(b"good\n"), "upload")
    fs = fsspec.filesystem("s3", **s3)
    fs.pipe(f"datasets/x/{sha[:2]}/{sha}", b"tampered\n")

    with pytest.raises(BlobStoreError, match="does not match its hash"):
        BlobStore(tmp_path / "b", "s3://datasets/x", s3).open_path(sha)
    assert not (tmp_path / "b" / sha[:2] / sha).exists()


def test_an_unreachable_object_store_is_a_blob_store_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    store = BlobStore(tmp_path, "s3://datasets/x", {
        "endpoint_url": "http://127.0.0.1:1", "skip_instance_cache": True,
        "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})

    with pytest.raises(BlobStoreError, match=r"cannot store dataset \w+ at s3://datasets/x"):
        store.put_stream(io.BytesIO(b"x\n"), "upload")
