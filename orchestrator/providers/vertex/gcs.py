"""Cloud Storage, I/O: datasets uploaded through the GCS JSON API for Vertex to read.

An object is named by the dataset's content hash, looked up before anything is sent, and
created only if absent (``ifGenerationMatch=0``, for two uploads racing), so a retried
upload finds the first instead of writing again. The object resource sent carries the
file's MD5 (``md5Hash``), so Cloud Storage refuses bytes that arrive different and stores
nothing; an object found later is used only if its size and MD5 are the local file's, and
one of ours that is not (written before this check existed) is deleted, that generation
only, and uploaded again.

Files up to the resumable threshold go in one multipart request (metadata + bytes);
larger ones in a resumable session, chunk by chunk, resuming from what the server
acknowledged. A session that expired (404 or 410) is replaced by a new one. Sessions are
not kept across steps: an upload the step gives up on starts over on its next attempt.
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
#: Round trips in a row that get no byte further (failed, or acknowledging nothing) after
#: which a resumable upload gives up (the step retries it).
MAX_STALLS = 10
#: Resumable sessions one upload may start (one expiring is rare; a loop of it is a fault).
MAX_SESSIONS = 3


class Send(Protocol):
    """The adapter's authorized request: a 2xx (or ``accept``ed) response or ProviderError."""

    def __call__(self, operation: str, method: str, url: str, *,
                 accept: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response: ...


class _SessionGone(Exception):
    """The resumable session expired or was cancelled at the server (404 or 410)."""


class CloudStorage:
    """The bucket and prefix datasets go to, at one JSON API base URL."""

    def __init__(self, send: Send, *, base_url: str, bucket: str, prefix: str,
                 resumable_threshold: int, chunk_bytes: int, deadline_s: float) -> None:
        self._send, self._base = send, base_url.rstrip("/")
        self.bucket, self.prefix = bucket, prefix
        self._threshold, self._chunk, self._deadline = resumable_threshold, chunk_bytes, deadline_s

    def find(self, sha256: str, local: Path) -> RemoteFile | None:
        """The dataset uploaded earlier with this hash, if the bucket holds a copy of
        ``local`` (same size and MD5); a copy of ours that differs is deleted."""
        name = translate.object_name(self.prefix, sha256)
        data = self._metadata(name)
        if data is None or (data.get("metadata") or {}).get(SHA256_METADATA) != sha256:
            return None
        size = local.stat().st_size
        if _int(data.get("size")) == size and data.get("md5Hash") == md5_of(local):
            return RemoteFile(id=self._uri(name), bytes=size)
        log.warning("gcs.copy_differs", object=self._uri(name), size=data.get("size"),
                    expected_size=size, generation=data.get("generation"))
        self._delete(data)
        return None

    def exists(self, uri: str) -> bool:
        """Whether the object of a ``gs://`` URI is still there."""
        bucket, name = translate.split_uri(uri)
        return self._metadata(name, bucket) is not None

    def upload(self, path: Path, sha256: str) -> RemoteFile:
        """Upload a dataset as ``<prefix>/tunectl-<sha256>.jsonl``, unless it is there."""
        found = self.find(sha256, path)  # one GET, where a resumable upload would send it all
        if found is not None:
            return found
        name = translate.object_name(self.prefix, sha256)
        size, md5 = path.stat().st_size, md5_of(path)
        metadata = {"name": name, "contentType": CONTENT_TYPE, "md5Hash": md5,
                    "metadata": {SHA256_METADATA: sha256}}
        with path.open("rb") as f:
            body = http.Deadline(f, self._deadline, provider=PROVIDER)
            try:
                if size <= self._threshold:
                    data = self._multipart(metadata, body.read())
                else:
                    data = self._resumable(metadata, body, size)
            except ProviderRejected as exc:
                if exc.status == 400 and "hash" in exc.message.lower():
                    # The bytes changed on the way: nothing was stored; send them again.
                    raise ProviderUnavailable(
                        f"Cloud Storage received other bytes than were sent ({exc.message})",
                        provider=PROVIDER, operation="upload file") from exc
                raise
        if data is None:  # created meanwhile (an earlier attempt's upload landed)
            found = self.find(sha256, path)
            if found is None:
                raise ProviderRejected(
                    f"{self._uri(name)} exists but was not uploaded by tunectl for this "
                    "dataset; delete it or choose another prefix", provider=PROVIDER,
                    operation="upload file", status=412)
            return found
        if _int(data.get("size")) != size or data.get("md5Hash") != md5:
            self._delete(data)
            raise ProviderUnavailable(f"Cloud Storage stored {data.get('size')} bytes of "
                                      f"{size}, or other bytes; deleted, to upload again",
                                      provider=PROVIDER, operation="upload file")
        return RemoteFile(id=self._uri(name), bytes=size)

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
        return None if response.status_code == 412 else dict(response.json())

    def _resumable(self, metadata: dict[str, Any], body: http.Deadline,
                   size: int) -> dict[str, Any] | None:
        for _ in range(MAX_SESSIONS):
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
                raise ProviderUnavailable(f"the resumable upload's session URL "
                                          f"{session[:80]!r} is not on the Cloud Storage host",
                                          provider=PROVIDER, operation="start upload")
            try:
                return self._chunks(session, body, size)
            except _SessionGone:
                log.warning("gcs.session_gone", why="expired or cancelled; starting a new one")
        raise ProviderUnavailable(f"{MAX_SESSIONS} resumable sessions in a row expired",
                                  provider=PROVIDER, operation="upload chunk")

    def _chunks(self, session: str, body: http.Deadline, size: int) -> dict[str, Any] | None:
        """Send the file from where the server's acknowledgements say it has it; one chunk
        is in memory at a time (re-read from the file after a partial acknowledgement)."""
        sent, stalls, query = 0, 0, False
        while True:
            body.check()
            query = query or sent >= size
            try:
                if query:
                    response = self._send("upload status", "PUT", session, content=b"",
                                          accept=(308, 404, 410, 412),
                                          headers={"content-range": f"bytes */{size}"})
                else:
                    body.seek(sent)
                    chunk = body.read(min(self._chunk, size - sent))
                    response = self._send(
                        "upload chunk", "PUT", session, content=chunk,
                        accept=(308, 404, 410, 412),
                        headers={"content-range": f"bytes {sent}-{sent + len(chunk) - 1}/{size}"})
            except RetryableProviderError as exc:
                stalls += 1
                if stalls >= MAX_STALLS:
                    raise
                log.warning("gcs.chunk_failed", error=str(exc), offset=sent)
                query = True  # ask what arrived before sending more
                continue
            query = False
            if response.status_code in (404, 410):
                raise _SessionGone
            if response.status_code == 412:
                return None
            if response.status_code != 308:
                return dict(response.json())
            acknowledged = _range_end(response)
            stalls = 0 if acknowledged > sent else stalls + 1
            if stalls >= MAX_STALLS:
                raise ProviderUnavailable(f"Cloud Storage acknowledged nothing new {stalls} "
                                          f"times in a row at byte {sent} of {size}",
                                          provider=PROVIDER, operation="upload chunk")
            sent = acknowledged

    def _delete(self, data: dict[str, Any]) -> None:
        """Delete one generation of an object (not a newer one written meanwhile)."""
        name, generation = str(data.get("name") or ""), str(data.get("generation") or "")
        if not generation.isdigit():
            raise ProviderUnavailable(f"{self._uri(name)} has no generation to delete",
                                      provider=PROVIDER, operation="delete object")
        self._send("delete object", "DELETE",
                   f"{self._base}{translate.object_path(self.bucket, name)}",
                   params={"ifGenerationMatch": generation}, accept=(404, 412))

    def _metadata(self, name: str, bucket: str | None = None) -> dict[str, Any] | None:
        response = self._send("get object", "GET",
                              f"{self._base}{translate.object_path(bucket or self.bucket, name)}",
                              accept=(404,))
        return None if response.status_code == 404 else dict(response.json())

    def _upload_url(self) -> str:
        return f"{self._base}/upload/storage/v1/b/{self.bucket}/o"

    def _uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"


def md5_of(path: Path) -> str:
    """A file's MD5 in base64, as Cloud Storage writes ``md5Hash``."""
    with path.open("rb") as f:
        return base64.b64encode(hashlib.file_digest(f, "md5").digest()).decode()


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _range_end(response: httpx.Response) -> int:
    """Bytes acknowledged by a 308: its ``Range: bytes=0-N`` (none yet: 0)."""
    value = response.headers.get("range", "")
    if not value.startswith("bytes=0-"):
        return 0
    try:
        return int(value.removeprefix("bytes=0-")) + 1
    except ValueError:
        return 0
