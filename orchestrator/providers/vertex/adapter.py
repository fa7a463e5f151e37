"""Vertex AI, I/O: tuning jobs (create, get, list by label, cancel), datasets in Cloud
Storage (gcs.py) and the tuned endpoint's generateContent, through the process's httpx
client with a Google access token (auth.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog

from orchestrator.errors import ProviderAuthError, ProviderRejected
from orchestrator.providers import http
from orchestrator.providers.base import JobRequest, RemoteEvent, RemoteFile, RemoteJob
from orchestrator.providers.vertex import translate
from orchestrator.providers.vertex.auth import GoogleAuth, HttpxRequest
from orchestrator.providers.vertex.gcs import CloudStorage
from orchestrator.providers.vertex.translate import PROVIDER

log = structlog.get_logger(__name__)
#: Tuning jobs per page when a retried submit looks for its job.
PAGE_SIZE = 100


class VertexClient:
    """One Google Cloud project and location, with its dataset bucket and credentials."""

    def __init__(self, client: httpx.Client, auth: GoogleAuth, *, project: str,
                 location: str, base_url: str | None, storage: Mapping[str, Any],
                 local: Callable[[str], Path],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """``base_url`` overrides Google's endpoint of each location (a proxy, the emulator);
        ``local`` gives the local file of a dataset by its hash (to check copies against).

        A tuning job or endpoint is always asked about at the location its resource name
        gives, whatever ``location`` (where new jobs go) is now.
        """
        self._client, self._auth, self._local, self._now = client, auth, local, now
        self._request = HttpxRequest(client)
        self.project, self.location = project, location
        self._override = base_url.rstrip("/") if base_url else None
        self._base = self._at(location)
        self._parent = translate.parent(project, location)
        self.storage = CloudStorage(self._send, **storage)
        identity = "\0".join((self._base, storage["base_url"], project, location,
                              self.storage.bucket, self.storage.prefix, auth.identity))
        self.account = hashlib.sha256(identity.encode()).hexdigest()[:16]

    def _send(self, operation: str, method: str, url: str, *, accept: tuple[int, ...] = (),
              **kwargs: Any) -> httpx.Response:
        """One authorized call; a 401 (a token that expired or was revoked early) gets one
        retry with a fresh token."""
        extra = kwargs.pop("headers", None) or {}
        content = kwargs.pop("content", None)
        if content is not None:
            extra = {**extra, "content-length": str(len(content))}
        for attempt in (1, 2):
            if content is not None:
                # A one-shot stream: a sent request then no longer holds the bytes (httpx's
                # response and its stream form a cycle the GC frees late, and upload
                # chunks would pile up until it does).
                kwargs["content"] = iter((content,))
            request = self._client.build_request(
                method, url, headers={**self._auth.headers(self._request), **extra}, **kwargs)
            try:
                return http.send(self._client, request, provider=PROVIDER, operation=operation,
                                 describe_error=translate.describe_error, accept=accept)
            except ProviderAuthError as exc:
                if exc.status != 401 or attempt == 2:
                    raise
                log.info("vertex.token_refused", operation=operation, why=str(exc))
                self._auth.refresh(self._request)
        raise AssertionError("unreachable")

    def _call(self, operation: str, method: str, path: str, *, base: str | None = None,
              **kwargs: Any) -> dict[str, Any]:
        response = self._send(operation, method, f"{base or self._base}{path}", **kwargs)
        return http.json_object(response, provider=PROVIDER, operation=operation)

    # Datasets

    def find_file(self, sha256: str) -> RemoteFile | None:
        return self.storage.find(sha256, self._local(sha256))

    def file_exists(self, file_id: str) -> bool:
        return self.storage.exists(file_id)

    def upload_file(self, path: Path, sha256: str) -> RemoteFile:
        return self.storage.upload(path, sha256)

    # Tuning jobs

    def _jobs(self, filter_: str | None) -> Iterator[dict[str, Any]]:
        """Every tuning job the filter (None: none) lists, page by page."""
        params: dict[str, Any] = {"pageSize": PAGE_SIZE}
        if filter_ is not None:
            params["filter"] = filter_
        while True:
            page = self._call("list jobs", "GET", f"/v1/{self._parent}/tuningJobs",
                              params=params)
            yield from (j for j in page.get("tuningJobs") or [] if isinstance(j, dict))
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token

    def find_job(self, job_id: str) -> RemoteJob | None:
        """The tuning job labelled with ``job_id``. The label is checked on each job, in case
        a server ignored the filter; one that refuses the filter (INVALID_ARGUMENT) gets
        the whole list, page by page, instead."""
        try:
            return self._labelled(job_id, translate.job_filter(job_id))
        except ProviderRejected as exc:
            if exc.status != 400 or not exc.message.startswith("INVALID_ARGUMENT"):
                raise
            log.warning("vertex.list_filter_refused", error=str(exc))
            return self._labelled(job_id, None)

    def _labelled(self, job_id: str, filter_: str | None) -> RemoteJob | None:
        for item in self._jobs(filter_):
            if translate.is_job_of(item, job_id):
                return self._remote(item)
        return None

    def create_job(self, request: JobRequest) -> RemoteJob:
        body = translate.job_body(request, request.training_file_id,
                                  request.validation_file_id)
        data = self._call("create job", "POST", f"/v1/{self._parent}/tuningJobs", json=body)
        return self._remote(data)

    def get_job(self, provider_job_id: str) -> RemoteJob:
        return self._remote(self._job(provider_job_id))

    def cancel_job(self, provider_job_id: str) -> RemoteJob:
        """Ask for a cancel (the answer is empty; it is asynchronous), then read the job."""
        self._call("cancel job", "POST", f"/v1/{provider_job_id}:cancel", json={},
                   base=self._job_base(provider_job_id, "cancel job"))
        return self.get_job(provider_job_id)

    def list_events(self, provider_job_id: str, limit: int = 20) -> list[RemoteEvent]:
        """The job's milestones (created, started, ended): Vertex keeps no event log for
        tuning jobs."""
        return translate.events(self._job(provider_job_id))[-limit:]

    # The tuned model

    def ask(self, model_ref: Mapping[str, Any], prompt: str) -> str:
        """The tuned endpoint's answer to ``prompt`` (generateContent)."""
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        endpoint = str(model_ref.get("endpoint") or "")
        try:  # the host comes from the endpoint's own name, checked: the token goes there
            base = self._at(translate.endpoint_location(endpoint))
        except ValueError as exc:
            raise ProviderRejected(str(exc), provider=PROVIDER,
                                   operation="generate content") from None
        data = self._call("generate content", "POST", f"/v1/{endpoint}:generateContent",
                          base=base, json=body)
        return translate.answer_text(data)

    def _job(self, name: str) -> dict[str, Any]:
        return self._call("get job", "GET", f"/v1/{name}", base=self._job_base(name, "get job"))

    def _job_base(self, name: str, operation: str) -> str:
        """The base URL for a tuning job: its own location's."""
        try:
            return self._at(translate.job_location(name))
        except ValueError as exc:
            raise ProviderRejected(str(exc), provider=PROVIDER, operation=operation) from None

    def _at(self, location: str) -> str:
        return self._override or translate.base_url(location)

    def _remote(self, data: dict[str, Any]) -> RemoteJob:
        job = translate.remote_job(data, self._now())
        if job.provider_status not in translate.STATUS:
            log.warning("provider.unknown_status", provider=PROVIDER, provider_job_id=job.id,
                        provider_status=job.provider_status)
        return job
