"""DashScope, I/O: the file, fine-tune and deployment HTTP calls, through the process's httpx
client."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog

from orchestrator.errors import ProviderRejected, ProviderUnavailable, RateLimited
from orchestrator.providers import http
from orchestrator.providers.base import (
    DeploymentRequest,
    DeploymentStatus,
    JobRequest,
    RemoteDeployment,
    RemoteEvent,
    RemoteFile,
    RemoteJob,
    RemoteStatus,
    dataset_filename,
)
from orchestrator.providers.dashscope import translate

log = structlog.get_logger(__name__)
PROVIDER = "dashscope"
#: Items per page when tunectl walks a list (the fine-tune list allows up to 100).
PAGE_SIZE = 100
#: Log lines read to explain a failed job that carries no message.
FAILURE_LOG_LINES = 5


class DashScopeClient:
    """One DashScope account (key + workspace) at one base URL."""

    def __init__(self, client: httpx.Client, *, base_url: str, api_key: str,
                 workspace: str | None = None, upload_timeout_s: float = 600.0) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {api_key}",
                         "accept": "application/json; charset=utf-8"}
        if workspace:
            self._headers["x-dashscope-workspace"] = workspace
        self._upload_timeout = upload_timeout_s
        identity = "\0".join((self._base, api_key, workspace or ""))
        self.account = hashlib.sha256(identity.encode()).hexdigest()[:16]

    def _call(self, operation: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        request = self._client.build_request(method, f"{self._base}{path}",
                                             headers=self._headers, **kwargs)
        response = http.send(self._client, request, provider=PROVIDER, operation=operation,
                             describe_error=translate.describe_error)
        return http.json_object(response, provider=PROVIDER, operation=operation,
                                parse=translate.parse_json)

    def _pages(self, operation: str, path: str, envelope: str, key: str) -> Iterator[Any]:
        """Every item of a paged list (``page_no`` / ``page_size`` / ``total``)."""
        page_no = 1
        while True:
            page = self._call(operation, "GET", path,
                              params={"page_no": page_no, "page_size": PAGE_SIZE})
            body = page.get(envelope) or {}
            items = body.get(key) or []
            yield from items
            total = body.get("total")
            if not items or (isinstance(total, int) and page_no * PAGE_SIZE >= total):
                return
            page_no += 1

    # Files

    def find_file(self, sha256: str) -> RemoteFile | None:
        name = dataset_filename(sha256)
        for item in self._pages("list files", "/files", "data", "files"):
            if item.get("name") == name and item.get("file_id"):
                return RemoteFile(id=str(item["file_id"]), bytes=int(item.get("size") or 0))
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
        """Upload through the multipart field ``files``. DashScope answers 200 even when the
        file was refused: it is then listed in ``failed_uploads`` with a code."""
        operation = "upload file"
        size = path.stat().st_size
        with path.open("rb") as f:
            body = http.Deadline(f, self._upload_timeout, provider=PROVIDER)
            data = self._call(
                operation, "POST", "/files",
                data={"purpose": "fine-tune", "descriptions": f"tunectl dataset {sha256}"},
                files={"files": (dataset_filename(sha256), body, "application/jsonl")},
                timeout=httpx.Timeout(self._upload_timeout, connect=10.0),
            ).get("data") or {}
        for failed in data.get("failed_uploads") or []:
            code = str(failed.get("code") or "")
            message = f"{failed.get('name')}: {code}: {failed.get('message')}"
            if translate.THROTTLING.match(code):
                raise RateLimited(message, provider=PROVIDER, operation=operation, status=200)
            raise ProviderRejected(message, provider=PROVIDER, operation=operation, status=200)
        uploaded = data.get("uploaded_files") or []
        if not uploaded or not uploaded[0].get("file_id"):
            raise ProviderUnavailable("the upload answer lists no uploaded file",
                                      provider=PROVIDER, operation=operation)
        return RemoteFile(id=str(uploaded[0]["file_id"]), bytes=size)

    # Fine-tunes

    def find_job(self, job_id: str) -> RemoteJob | None:
        """The fine-tune whose ``job_name`` is the tunectl job id (every page is read: the
        list has no name filter)."""
        for item in self._pages("find job", "/fine-tunes", "output", "jobs"):
            if item.get("job_name") == job_id:
                return self._checked(translate.remote_job(item))
        return None

    def create_job(self, request: JobRequest) -> RemoteJob:
        data = self._call("create job", "POST", "/fine-tunes", json=translate.job_body(request))
        return self._checked(translate.remote_job(data.get("output") or {}))

    def get_job(self, provider_job_id: str) -> RemoteJob:
        data = self._call("get job", "GET", f"/fine-tunes/{provider_job_id}")
        job = self._checked(translate.remote_job(data.get("output") or {}))
        if job.status is RemoteStatus.FAILED and job.error is None:
            # The job object names no reason: the end of its training log does.
            total, lines = self.logs(provider_job_id, offset=0, line=1)
            if total:
                _, lines = self.logs(provider_job_id,
                                     offset=max(0, total - FAILURE_LOG_LINES),
                                     line=FAILURE_LOG_LINES)
            reason = " | ".join(lines) or "DashScope reported the job failed without a reason"
            job = RemoteJob(job.id, job.status, job.provider_status, error=reason,
                            result=job.result)
        return job

    def cancel_job(self, provider_job_id: str) -> RemoteJob:
        """Ask for a cancel (the answer is only ``{"status": "success"}``), then read the job."""
        self._call("cancel job", "POST", f"/fine-tunes/{provider_job_id}/cancel")
        return self.get_job(provider_job_id)

    def delete_job(self, provider_job_id: str) -> None:
        """Delete a fine-tune job that has ended (its tuned model stays)."""
        self._call("delete job", "DELETE", f"/fine-tunes/{provider_job_id}")

    def logs(self, provider_job_id: str, *, offset: int = 0,
             line: int = 100) -> tuple[int, list[str]]:
        """``line`` training log lines after the first ``offset``, and how many there are."""
        data = self._call("get logs", "GET", f"/fine-tunes/{provider_job_id}/logs",
                          params={"offset": offset, "line": line}).get("output") or {}
        total = data.get("total")
        return (int(total) if isinstance(total, int) else 0,
                [str(entry) for entry in data.get("logs") or []])

    def list_events(self, provider_job_id: str, limit: int = 20) -> list[RemoteEvent]:
        """The newest training log lines, oldest first. DashScope's log lines carry no time
        of their own: ``at`` is when tunectl read them."""
        total, lines = self.logs(provider_job_id, offset=0, line=limit)
        if total > limit:
            _, lines = self.logs(provider_job_id, offset=total - limit, line=limit)
        now = datetime.now(UTC)
        return [RemoteEvent(at=now, level="error" if "fail" in text.lower() else "info",
                            message=text) for text in lines]

    # Deployments

    def find_deployment(self, model: str) -> RemoteDeployment | None:
        """The deployment of ``model`` that is neither failed nor being deleted: tunectl
        deploys each tuned model once, so this is the one a retried deploy created."""
        for item in self._pages("find deployment", "/deployments", "output", "deployments"):
            if item.get("model_name") != model:
                continue
            found = self._checked_deployment(translate.remote_deployment(item))
            if found.status in (DeploymentStatus.STARTING, DeploymentStatus.SERVING):
                return found
        return None

    def create_deployment(self, request: DeploymentRequest) -> RemoteDeployment:
        data = self._call("create deployment", "POST", "/deployments",
                          json={"model_name": request.model, "capacity": request.capacity})
        return self._checked_deployment(translate.remote_deployment(data.get("output") or {}))

    def get_deployment(self, deployment_id: str) -> RemoteDeployment | None:
        try:
            data = self._call("get deployment", "GET", f"/deployments/{deployment_id}")
        except ProviderRejected as exc:
            if exc.status == 404:
                return None
            raise
        return self._checked_deployment(translate.remote_deployment(data.get("output") or {}))

    def list_deployments(self) -> list[RemoteDeployment]:
        return [self._checked_deployment(translate.remote_deployment(item))
                for item in self._pages("list deployments", "/deployments", "output",
                                        "deployments")]

    def scale_deployment(self, deployment_id: str, capacity: int) -> RemoteDeployment:
        data = self._call("scale deployment", "PUT", f"/deployments/{deployment_id}/scale",
                          json={"deployed_model": deployment_id, "capacity": capacity})
        return self._checked_deployment(translate.remote_deployment(data.get("output") or {}))

    def delete_deployment(self, deployment_id: str) -> None:
        try:
            self._call("delete deployment", "DELETE", f"/deployments/{deployment_id}")
        except ProviderRejected as exc:
            if exc.status != 404:  # gone already: nothing bills
                raise

    @staticmethod
    def _checked(job: RemoteJob) -> RemoteJob:
        if job.provider_status not in translate.STATUS:
            log.warning("provider.unknown_status", provider=PROVIDER, provider_job_id=job.id,
                        provider_status=job.provider_status)
        return job

    @staticmethod
    def _checked_deployment(deployment: RemoteDeployment) -> RemoteDeployment:
        if deployment.provider_status not in translate.DEPLOYMENT_STATUS:
            log.warning("provider.unknown_deployment_status", provider=PROVIDER,
                        deployment=deployment.id, provider_status=deployment.provider_status)
        return deployment
