"""Google credentials for Vertex AI and Cloud Storage, through google-auth.

Credentials come from a file (``GOOGLE_APPLICATION_CREDENTIALS``, else gcloud's application
default credentials file), loaded with google-auth's loader for its type: a service-account
key, an authorized user, Workload Identity Federation (``external_account``) or an
impersonated service account; a configuration whose credential source is an executable is
refused, as it would run a command on every worker. Without a file, the
metadata server's (on Google Cloud). google-auth makes every token call through
``HttpxRequest``, the process's httpx client. Credentials are cached per process and file
version; tokens are refreshed before they expire, and a 401 (a token revoked or expired
early) forces one refresh.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google.oauth2.credentials
import httpx
from google.auth import _cloud_sdk, aws, identity_pool, impersonated_credentials
from google.oauth2 import service_account

from orchestrator.errors import MissingCredential, ProviderAuthError, ProviderUnavailable
from orchestrator.providers.vertex.translate import PROVIDER, SCOPES

#: Seconds a token request may take.
TOKEN_TIMEOUT_S = 30.0
AWS_SUBJECT_TOKEN = "urn:ietf:params:aws:token-type:aws4_request"


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
    """The process's credentials from ``key_file``, else from gcloud's application default
    credentials file, else from the metadata server (on Google Cloud). A file's credentials
    are loaded again when the file changes (a rotated key, a new ``gcloud auth
    application-default login``).

    Raises:
        MissingCredential: there are none, or the file is unreadable, not credentials, or
            runs a command.
    """
    path = key_file or _gcloud_file()
    try:
        key = (str(path), path.stat().st_mtime_ns) if path else ("metadata server", 0)
    except OSError as exc:
        raise MissingCredential(f"GOOGLE_APPLICATION_CREDENTIALS={key_file} cannot be read "
                                f"({exc.strerror}); fix the path") from exc
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            return found
        if path is not None:
            creds, project = _from_file(path, key_file is not None)
        else:  # the metadata server may be asked already: a failure is retried
            with _translated("load the credentials"):
                try:
                    creds, project = google.auth.default(scopes=list(SCOPES), request=request)
                except google.auth.exceptions.DefaultCredentialsError as exc:
                    raise MissingCredential(
                        f"no Google credentials found ({exc}); set "
                        "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run "
                        "`gcloud auth application-default login`") from None
        found = _cache[key] = GoogleAuth(creds, project)
        return found


def _gcloud_file() -> Path | None:
    """gcloud's application default credentials file, if there is one."""
    path = Path(_cloud_sdk.get_application_default_credentials_path())
    return path if path.is_file() else None


def _from_file(path: Path, configured: bool) -> tuple[google.auth.credentials.Credentials,
                                                     str | None]:
    """Credentials from a service-account key, an authorized user, Workload Identity
    Federation's external_account or an impersonated service account file, each through
    google-auth's loader for that type (its advice for files from elsewhere), except one
    whose credential source is a command."""
    where = f"GOOGLE_APPLICATION_CREDENTIALS={path}" if configured else \
        f"the application default credentials file {path}"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MissingCredential(f"{where} is not a readable JSON credentials file ({exc}); "
                                "download it again") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if _runs_a_command(info):
        raise MissingCredential(
            f"{where}: its credential_source.executable would run a command on every tunectl "
            "worker, which tunectl refuses; use a file or URL credential source")
    load = _LOADERS.get(str(kind))
    if load is None:
        raise MissingCredential(f"{where}: tunectl reads {', '.join(_LOADERS)} files, not "
                                f"{kind!r}")
    try:
        return load(info)
    except (ValueError, KeyError, TypeError,
            google.auth.exceptions.GoogleAuthError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise MissingCredential(f"{where}: the {kind} file is incomplete ({reason}); "
                                "download or create it again") from None


def _external_account(info: dict[str, Any]) -> google.auth.credentials.Credentials:
    kind = aws if info.get("subject_token_type") == AWS_SUBJECT_TOKEN else identity_pool
    creds: google.auth.credentials.Credentials = kind.Credentials.from_info(
        info, scopes=list(SCOPES))
    return creds


Loaded = tuple[google.auth.credentials.Credentials, str | None]
#: Credentials file type → how google-auth loads it, and the project it names.
_LOADERS: dict[str, Callable[[dict[str, Any]], Loaded]] = {
    "service_account": lambda info: (service_account.Credentials.from_service_account_info(
        info, scopes=list(SCOPES)), info.get("project_id")),
    "authorized_user": lambda info: (
        google.oauth2.credentials.Credentials.from_authorized_user_info(
            info, scopes=list(SCOPES)), info.get("quota_project_id")),
    "external_account": lambda info: (_external_account(info),
                                      info.get("workforce_pool_user_project")),
    "impersonated_service_account": lambda info: (
        impersonated_credentials.Credentials.from_impersonated_service_account_info(
            info, scopes=list(SCOPES)), None),
}


def _runs_a_command(info: Any) -> bool:
    """Whether an external_account configuration (an impersonated account's source too)
    takes its token from an executable."""
    if not isinstance(info, dict):
        return False
    source = info.get("credential_source")
    if isinstance(source, dict) and "executable" in source:
        return True
    return _runs_a_command(info.get("source_credentials"))


def forget() -> None:
    """Drop the cached credentials (tests that change key files)."""
    with _cache_lock:
        _cache.clear()
