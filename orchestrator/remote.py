"""The CLI's client of a remote tunectl API (``tunectl … --api URL``): the same operations
as the local database gives, returning the same JSON documents, and the API's refusals as
the same one-line UserErrors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator import __version__
from orchestrator.errors import UserError
from orchestrator.jobs import JobFilter
from orchestrator.specs import JobSpec

#: Submits carry datasets: give them time (the API bounds their size).
_TIMEOUT = httpx.Timeout(60.0, connect=10.0, write=600.0)


class RemoteApi:
    """A tunectl API at ``url``, called with ``token``."""

    def __init__(self, url: str, token: str | None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--api {url!r}: give the API's http:// or https:// URL")
        if not token:
            raise UserError("TUNECTL_API_TOKEN is not set: the API at "
                            f"{url} needs a token (`tunectl api-token` makes one)")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=_TIMEOUT, transport=transport,
                                  headers={"authorization": f"Bearer {token}",
                                           "user-agent": f"tunectl/{__version__}"})

    def __enter__(self) -> RemoteApi:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach the API at {self.url} ({type(exc).__name__}: "
                            f"{exc}); check --api / TUNECTL_API_URL") from None
        if response.status_code >= 400:
            try:
                detail = str(response.json()["detail"])
            except (ValueError, KeyError, TypeError):
                detail = response.text.strip()[:300] or response.reason_phrase
            if response.status_code == 401:
                detail = f"the API at {self.url} refused the token: {detail}"
            raise UserError(detail)
        return response.json()

    def submit(self, spec: JobSpec) -> dict[str, Any]:
        """Send the spec with its datasets in one multipart request."""
        body = spec.model_dump(mode="json", exclude={"training_file", "validation_file"},
                               exclude_none=True)
        files = {"training_file": _file(spec.training_file)}
        if spec.validation_file is not None:
            files["validation_file"] = _file(spec.validation_file)
        try:
            data: dict[str, Any] = self._call("POST", "/v1/jobs", files=files,
                                              data={"spec": json.dumps(body)})
        finally:
            for _, handle in files.values():
                handle.close()
        return data

    def jobs(self, where: JobFilter, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs, newest first (following the API's pages)."""
        params: list[tuple[str, str]] = [(k, v) for k, v in (
            ("state", where.state), ("provider", where.provider),
            ("created_after", where.created_after and where.created_after.isoformat()),
            ("created_before", where.created_before and where.created_before.isoformat()),
        ) if v]
        params += [("label", f"{k}={v}") for k, v in where.labels]
        found: list[dict[str, Any]] = []
        cursor = None
        while len(found) < limit:
            page = self._call("GET", "/v1/jobs", params=[
                *params, ("limit", str(min(1000, limit - len(found)))),
                *([("cursor", cursor)] if cursor else [])])
            found += page["jobs"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return found

    def show(self, job_id: str, *, events: bool) -> dict[str, Any]:
        """The job with its history and deployments (and provider events), as
        ``tunectl show --json`` prints it."""
        data: dict[str, Any] = self._call("GET", f"/v1/jobs/{_id(job_id)}")
        deployments = data.pop("deployments")
        data["history"] = self._call("GET", f"/v1/jobs/{_id(job_id)}/history")
        data["deployments"] = deployments
        if events:
            data["provider_events"] = self._call("GET", f"/v1/jobs/{_id(job_id)}/events")
        return data

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job."""
        data: dict[str, Any] = self._call("POST", f"/v1/jobs/{_id(job_id)}/cancel")
        return data


def _id(job_id: str) -> str:
    """A job id as one URL path segment."""
    return quote(job_id, safe="")


def _file(path: Path) -> tuple[str, Any]:
    try:
        return path.name, path.open("rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the dataset ({exc.strerror})") from exc
