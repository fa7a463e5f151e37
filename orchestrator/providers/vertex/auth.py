"""Google credentials for Vertex AI and Cloud Storage, through google-auth.

Credentials come from a key file (``GOOGLE_APPLICATION_CREDENTIALS``: a service-account key,
or a user's ``authorized_user`` file; other kinds, such as external-account configurations
that run commands, are refused) or from application default credentials (gcloud's, or the
metadata server's on Google Cloud). google-auth makes every token call (the service
account's JWT bearer grant to the file's ``token_uri``) through ``HttpxRequest``, the
process's httpx client. Tokens are cached per process and refreshed before they expire;
a 401 (a token revoked or expired early) forces one refresh.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google.oauth2.credentials
import httpx
from google.oauth2 import service_account

from orchestrator.errors import MissingCredential, ProviderAuthError, ProviderUnavailable
from orchestrator.providers.vertex.translate import PROVIDER, SCOPES

#: Seconds a token request may take.
TOKEN_TIMEOUT_S = 30.0


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxRequest(google.auth.transport.Request):
    """google-auth's transport over an httpx client."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None,
                 **kwargs: Any) -> _Response:
        try:
            request = self._client.build_request(method, url, content=body, headers=headers,
                                                 timeout=timeout or TOKEN_TIMEOUT_S)
            response = self._client.send(request)
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc
        return _Response(response)


class GoogleAuth:
    """One set of credentials, shared by every client of the process, behind a lock."""

    def __init__(self, credentials: google.auth.credentials.Credentials,
                 project: str | None) -> None:
        self.credentials, self.project = credentials, project
        self._lock = threading.Lock()
        #: Who calls (a service account's email, or the kind of credentials).
        self.identity = str(getattr(credentials, "service_account_email", None)
                            or type(credentials).__name__)

    def headers(self, request: HttpxRequest) -> dict[str, str]:
        """The authorization header, refreshing the token first if it is missing or
        close to expiry (google-auth's ``before_request``)."""
        headers: dict[str, str] = {}
        with self._lock, _translated("get an access token"):
            self.credentials.before_request(request, "GET", "", headers)
        return headers

    def refresh(self, request: HttpxRequest) -> None:
        """Get a new token now (the server refused the current one)."""
        with self._lock, _translated("refresh the access token"):
            self.credentials.refresh(request)


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    """google-auth failures as ProviderError: a refused grant is permanent, a transport
    failure (or a token endpoint that keeps failing) is retried."""
    try:
        yield
    except google.auth.exceptions.RefreshError as exc:
        cls = ProviderUnavailable if getattr(exc, "retryable", False) else ProviderAuthError
        raise cls(f"Google refused the credentials: {exc}", provider=PROVIDER,
                  operation=operation) from exc
    except google.auth.exceptions.GoogleAuthError as exc:
        raise ProviderUnavailable(f"cannot get a Google access token: {exc}",
                                  provider=PROVIDER, operation=operation) from exc


_cache: dict[tuple[str, int], GoogleAuth] = {}
_cache_lock = threading.Lock()


def credentials(key_file: Path | None, request: HttpxRequest) -> GoogleAuth:
    """The process's credentials from ``key_file`` (reloaded when it changes), or the
    application default credentials.

    Raises:
        MissingCredential: there are none, or the file is unreadable or not credentials.
    """
    try:
        key = (str(key_file), key_file.stat().st_mtime_ns) if key_file else ("adc", 0)
    except OSError as exc:
        raise MissingCredential(f"GOOGLE_APPLICATION_CREDENTIALS={key_file} cannot be read "
                                f"({exc.strerror}); fix the path") from exc
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            return found
        try:
            if key_file is not None:
                creds, project = _from_file(key_file)
            else:
                creds, project = google.auth.default(scopes=list(SCOPES), request=request)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise MissingCredential(
                f"no Google credentials found ({exc}); set GOOGLE_APPLICATION_CREDENTIALS to "
                "a service-account key file, or run `gcloud auth application-default login`"
            ) from None
        found = _cache[key] = GoogleAuth(creds, project)
        return found


def _from_file(path: Path) -> tuple[google.auth.credentials.Credentials, str | None]:
    """Credentials from a service-account key or authorized-user file."""
    where = f"GOOGLE_APPLICATION_CREDENTIALS={path}"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MissingCredential(f"{where} is not a readable JSON key file ({exc}); "
                                "download the service account's key again") from None
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            return (service_account.Credentials.from_service_account_info(
                info, scopes=list(SCOPES)), info.get("project_id"))
        if kind == "authorized_user":
            return (google.oauth2.credentials.Credentials.from_authorized_user_info(
                info, scopes=list(SCOPES)), info.get("quota_project_id"))
    except (ValueError, KeyError) as exc:
        raise MissingCredential(f"{where}: the {kind} file is incomplete ({exc}); download "
                                "it again") from None
    raise MissingCredential(f"{where}: tunectl reads service_account and authorized_user "
                            f"files, not {kind!r}; use application default credentials for "
                            "other kinds (unset the variable)")


def forget() -> None:
    """Drop the cached credentials (tests that change key files)."""
    with _cache_lock:
        _cache.clear()
