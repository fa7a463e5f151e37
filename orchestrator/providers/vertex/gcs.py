"""Cloud Storage, I/O: datasets uploaded through the GCS JSON API for Vertex to read.

An object is named by the dataset's content hash, looked up before anything is sent, and
created only if absent (``ifGenerationMatch=0``, for two uploads racing), so a retried
upload finds the first instead of writing again.
Files up to the resumable threshold go in one multipart request (metadata + bytes);
larger ones in a resumable session, chunk by chunk, resuming from what the server
acknowledged after a failed chunk. The MD5 Cloud Storage computes is checked against the
bytes sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog

from orchestrator.errors import ProviderRejected, ProviderUnavailable, RetryableProviderError
from orchestrator.providers import http
from orchestrator.providers.base import RemoteFile
from orchestrator.providers.vertex import translate
from orchestrator.providers.vertex.translate import PROVIDER, SHA256_METADATA

log = structlog.get_logger(__name__)
CONTENT_TYPE = "application/jsonl"
#: Failed chunks in a row after which a resumable upload gives up (the step retries it).
MAX_CHUNK_FAILURES = 5


class Send(Protocol):
    """The adapter's authorized request: a 2xx (or ``accept``ed) response or ProviderError."""

    def __call__(self, operation: str, method: str, url: str, *,
                 accept: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response: ...


class CloudStorage:
    """The bucket and prefix datasets go to, at one JSON API base URL."""

    def __init__(self, send: Send, *, base_url: str, bucket: str, prefix: str,
                 resumable_threshold: int, chunk_bytes: int, deadline_s: float) -> None:
        self._send, self._base = send, base_url.rstrip("/")
        self.bucket, self.prefix = bucket, prefix
        self._threshold, self._chunk, self._deadline = resumable_threshold, chunk_bytes, deadline_s

    def find(self, sha256: str) -> RemoteFile | None:
        """The dataset uploaded earlier with this hash, if the bucket has it."""
        data = self._metadata(translate.object_name(self.prefix, sha256))
        if data is None or (data.get("metadata") or {}).get(SHA256_METADATA) != sha256:
            return None
        return RemoteFile(id=self._uri(data["name"]), bytes=int(data.get("size") or 0))

    def exists(self, uri: str) -> bool:
        """Whether the object of a ``gs://`` URI is still there."""
        bucket, name = translate.split_uri(uri)
        return self._metadata(name, bucket) is not None

    def upload(self, path: Path, sha256: str) -> RemoteFile:
        """Upload a dataset as ``<prefix>/tunectl-<sha256>.jsonl``, unless it is there."""
        found = self.find(sha256)  # one GET, where a resumable upload would send it all
        if found is not None:
            return found
        name = translate.object_name(self.prefix, sha256)
        size = path.stat().st_size
        metadata = {"name": name, "contentType": CONTENT_TYPE,
                    "metadata": {SHA256_METADATA: sha256}}
        with path.open("rb") as f:
            body = http.Deadline(f, self._deadline, provider=PROVIDER)
            if size <= self._threshold:
                data = self._multipart(metadata, body.read())
            else:
                data = self._resumable(metadata, body, size)
        if data is None:  # created meanwhile (an earlier attempt's upload landed)
            found = self.find(sha256)
            if found is None:
                raise ProviderRejected(
                    f"{self._uri(name)} exists but was not uploaded by tunectl for this "
                    "dataset; delete it or choose another prefix", provider=PROVIDER,
                    operation="upload file", status=412)
            return found
        if int(data.get("size") or -1) != size:
            raise ProviderUnavailable(f"Cloud Storage stored {data.get('size')} bytes of "
                                      f"{size}", provider=PROVIDER, operation="upload file")
        return RemoteFile(id=self._uri(str(data["name"])), bytes=size)

    # The two upload kinds return the object resource, or None on 412 (it exists already).

    def _multipart(self, metadata: dict[str, Any], content: bytes) -> dict[str, Any] | None:
        boundary = f"tunectl-{secrets.token_hex(12)}"
        body = b"".join((
            f"--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n".encode(),
            json.dumps(metadata).encode(),
            f"\r\n--{boundary}\r\ncontent-type: {CONTENT_TYPE}\r\n\r\n".encode(),
            content, f"\r\n--{boundary}--\r\n".encode()))
        response = self._send(
            "upload file", "POST", self._upload_url(), accept=(412,),
            params={"uploadType": "multipart", "ifGenerationMatch": "0"}, content=body,
            headers={"content-type": f"multipart/related; boundary={boundary}"})
        if response.status_code == 412:
            return None
        return self._checked(response, hashlib.md5(content).digest())

    def _resumable(self, metadata: dict[str, Any], body: http.Deadline,
                   size: int) -> dict[str, Any] | None:
        started = self._send(
            "start upload", "POST", self._upload_url(), accept=(412,),
            params={"uploadType": "resumable", "ifGenerationMatch": "0"}, json=metadata,
            headers={"x-upload-content-type": CONTENT_TYPE,
                     "x-upload-content-length": str(size)})
        if started.status_code == 412:
            return None
        session = started.headers.get("location") or ""
        if httpx.URL(session).netloc != httpx.URL(self._base).netloc:
            # The access token goes to the session URL too: never to another host.
            raise ProviderUnavailable(f"the resumable upload's session URL {session[:80]!r} "
                                      "is not on the Cloud Storage host", provider=PROVIDER,
                                      operation="start upload")
        # ``sent`` bytes are acknowledged (and in ``md5``); ``chunk`` is what follows them.
        md5, sent, chunk, failures, query = hashlib.md5(), 0, b"", 0, False
        while True:
            if not chunk and not query:
                query = sent >= size
                chunk = b"" if query else body.read(min(self._chunk, size - sent))
            content_range = (f"bytes */{size}" if query
                             else f"bytes {sent}-{sent + len(chunk) - 1}/{size}")
            try:
                response = self._send("upload status" if query else "upload chunk", "PUT",
                                      session, content=b"" if query else chunk,
                                      accept=(308, 412), headers={"content-range": content_range})
            except RetryableProviderError as exc:
                failures += 1
                if failures >= MAX_CHUNK_FAILURES:
                    raise
                log.warning("gcs.chunk_failed", error=str(exc), offset=sent)
                query = True  # ask what arrived before sending more
                continue
            failures, query = 0, False
            if response.status_code == 412:
                return None
            if response.status_code != 308:
                md5.update(chunk)
                return self._checked(response, md5.digest())
            done = max(0, _range_end(response) - sent)
            md5.update(chunk[:done])
            chunk, sent = chunk[done:], sent + done

    def _checked(self, response: httpx.Response, md5: bytes) -> dict[str, Any]:
        data = response.json()
        stored = data.get("md5Hash")
        if stored and base64.b64decode(stored) != md5:
            raise ProviderUnavailable("Cloud Storage's MD5 of the upload differs from the "
                                      "bytes sent", provider=PROVIDER, operation="upload file")
        return dict(data)

    def _metadata(self, name: str, bucket: str | None = None) -> dict[str, Any] | None:
        response = self._send("get object", "GET",
                              f"{self._base}{translate.object_path(bucket or self.bucket, name)}",
                              accept=(404,))
        return None if response.status_code == 404 else dict(response.json())

    def _upload_url(self) -> str:
        return f"{self._base}/upload/storage/v1/b/{self.bucket}/o"

    def _uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"


def _range_end(response: httpx.Response) -> int:
    """Bytes acknowledged by a 308: its ``Range: bytes=0-N`` (none yet: 0)."""
    value = response.headers.get("range", "")
    if not value.startswith("bytes=0-"):
        return 0
    try:
        return int(value.removeprefix("bytes=0-")) + 1
    except ValueError:
        return 0
