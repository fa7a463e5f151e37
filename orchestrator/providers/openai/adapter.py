"""OpenAI, I/O: the Files and Fine-tuning HTTP calls, through the process's httpx client."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import structlog

from orchestrator.errors import ProviderRejected, ProviderUnavailable
from orchestrator.providers import http
from orchestrator.providers.base import (
    JobRequest,
    RemoteEvent,
    RemoteFile,
    RemoteJob,
    dataset_filename,
)
from orchestrator.providers.openai import translate

log = structlog.get_logger(__name__)
PROVIDER = "openai"


class OpenAIClient:
    """One OpenAI account (key + organization + project) at one base URL."""

    def __init__(self, client: httpx.Client, *, base_url: str, api_key: str,
                 organization: str | None = None, project: str | None = None,
                 upload_timeout_s: float = 600.0) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {api_key}"}
        if organization:
            self._headers["openai-organization"] = organization
        if project:
            self._headers["openai-project"] = project
        self._upload_timeout = upload_timeout_s
        identity = "\0".join((self._base, api_key, organization or "", project or ""))
        self.account = hashlib.sha256(identity.encode()).hexdigest()[:16]

    def _call(self, operation: str, method: str, path: str, *,
              headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        request = self._client.build_request(method, f"{self._base}{path}",
                                             headers={**self._headers, **(headers or {})},
                                             **kwargs)
        response = http.send(self._client, request, provider=PROVIDER, operation=operation,
                             describe_error=translate.describe_error)
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderUnavailable("the response was not JSON", provider=PROVIDER,
                                      operation=operation, status=response.status_code) from exc

    def _pages(self, operation: str, path: str, params: dict[str, Any]) -> Iterator[Any]:
        """Follow OpenAI's ``after`` cursor through a list endpoint."""
        params = dict(params)
        while True:
            page = self._call(operation, "GET", path, params=params)
            data = page.get("data") or []
            yield from data
            if not page.get("has_more") or not data:
                return
            params["after"] = data[-1]["id"]

    def find_file(self, sha256: str) -> RemoteFile | None:
        name = dataset_filename(sha256)
        params = {"purpose": "fine-tune", "order": "desc", "limit": 10000}
        for item in self._pages("list files", "/files", params):
            if item.get("filename") == name and item.get("status") != "error":
                return RemoteFile(id=item["id"], bytes=int(item.get("bytes") or 0))
        return None

    def file_exists(self, file_id: str) -> bool:
        try:
            self._call("get file", "GET", f"/files/{file_id}")
        except ProviderRejected as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def upload_file(self, path: Path, sha256: str) -> RemoteFile:
        with path.open("rb") as f:
            body = http.Deadline(f, self._upload_timeout, provider=PROVIDER)
            data = self._call(
                "upload file", "POST", "/files",
                data={"purpose": "fine-tune"},
                files={"file": (dataset_filename(sha256), body, "application/jsonl")},
                timeout=httpx.Timeout(self._upload_timeout, connect=10.0),
            )
        return RemoteFile(id=data["id"], bytes=int(data.get("bytes") or 0))

    def find_job(self, job_id: str) -> RemoteJob | None:
        params = {f"metadata[{translate.JOB_ID_KEY}]": job_id, "limit": 100}
        for item in self._pages("find job", "/fine_tuning/jobs", params):
            if (item.get("metadata") or {}).get(translate.JOB_ID_KEY) == job_id:
                return translate.remote_job(item)
        return None

    def create_job(self, request: JobRequest) -> RemoteJob:
        data = self._call("create job", "POST", "/fine_tuning/jobs",
                          json=translate.job_body(request),
                          headers={"idempotency-key": f"tunectl-create-{request.job_id}"})
        return self._checked(translate.remote_job(data))

    def get_job(self, provider_job_id: str) -> RemoteJob:
        data = self._call("get job", "GET", f"/fine_tuning/jobs/{provider_job_id}")
        return self._checked(translate.remote_job(data))

    def cancel_job(self, provider_job_id: str) -> RemoteJob:
        data = self._call("cancel job", "POST", f"/fine_tuning/jobs/{provider_job_id}/cancel")
        return self._checked(translate.remote_job(data))

    def list_events(self, provider_job_id: str, limit: int = 20) -> list[RemoteEvent]:
        page = self._call("list events", "GET", f"/fine_tuning/jobs/{provider_job_id}/events",
                          params={"limit": limit})
        return [translate.event(item) for item in reversed(page.get("data") or [])]

    @staticmethod
    def _checked(job: RemoteJob) -> RemoteJob:
        if job.provider_status not in translate.STATUS:
            log.warning("provider.unknown_status", provider=PROVIDER,
                        provider_job_id=job.id, provider_status=job.provider_status)
        return job
