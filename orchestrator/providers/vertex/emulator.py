"""A local emulator of the Google APIs a Vertex tuning job needs (FastAPI): tests, demo,
benchmarks.

`create_app()` serves, at one root (`tunectl emulator` mounts it under /google):

    POST /token                                   OAuth 2 token endpoint (jwt-bearer grant)
    POST /sts/v1/token                            STS token exchange (workload identity)
    POST /iamcredentials/v1/projects/-/serviceAccounts/{email}:generateAccessToken
    POST /storage/v1/b?project=…                  create a bucket (GET …/b/{bucket}: read it)
    GET  /storage/v1/b/{bucket}/o                 list objects (prefix, delimiter, offsets,
                                                  maxResults, pageToken)
    GET  /storage/v1/b/{bucket}/o/{object}        object metadata (``alt=media``: its bytes)
    DELETE /storage/v1/b/{bucket}/o/{object}      delete it (``ifGenerationMatch``)
    GET  /download/storage/v1/b/{bucket}/o/{object}   its bytes (the object's ``mediaLink``)
    POST /upload/storage/v1/b/{bucket}/o          uploadType=media | multipart | resumable
    PUT  /upload/storage/v1/b/{bucket}/o          a resumable session's chunks (``upload_id``;
                                                  a POST there is a chunk too)
    DELETE /upload/storage/v1/b/{bucket}/o        cancel that session (499)
    POST /{v1|v1beta1}/projects/{p}/locations/{l}/tuningJobs          create
    GET  /{v1|v1beta1}/projects/{p}/locations/{l}/tuningJobs          list (filter, paging)
    GET  /{v1|v1beta1}/projects/{p}/locations/{l}/tuningJobs/{id}     get
    POST /{v1|v1beta1}/projects/{p}/locations/{l}/tuningJobs/{id}:cancel
    POST /{v1|v1beta1}/projects/{p}/locations/{l}/endpoints/{id}:generateContent

Every API call needs a bearer token the token endpoint issued (or ``api_key``); an expired
one gets 401 UNAUTHENTICATED. The token endpoint grants a request whose scope includes
cloud-platform, iam or a Cloud Storage ``devstorage.*`` scope (gcsfs asks for
``devstorage.full_control``); tokens are not bound to their scopes. Register a service
account's public key first with ``POST /_emulator/service-accounts``, or have the emulator
make a key file with ``POST /_emulator/service-accounts/keys``. Multipart uploads take CRLF
or bare-LF line breaks (gcsfs sends LF), as Cloud Storage does. Object lists come in name
order, at most 1000 items and prefixes a page, with empty ``items`` and ``prefixes`` left
out, as Cloud Storage answers (``matchGlob`` and ``softDeleted`` are refused with 400; a
bucket keeps one generation of each object, so ``versions`` lists the same). Errors use
Google's shape. A Scenario (emulator_state.py) injects 429 RESOURCE_EXHAUSTED, 5xx and slow
responses through the shared fault machinery, fails jobs, and sets the token lifetime.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.providers import emulation
from orchestrator.providers.emulation import (
    EmulatorMount,
    Throttle,
    admin_routes,
    emulator_app,
    route_path,
)
from orchestrator.providers.vertex.emulator_state import (
    ApiError,
    OAuthError,
    Scenario,
    Store,
    invalid,
    not_found,
)

__all__ = ["Scenario", "create_app", "mount", "serve"]

API_PREFIXES = ("/v1/", "/v1beta1/", "/storage/", "/upload/", "/download/", "/token",
                "/sts/", "/iamcredentials/")
#: Under the fault and latency knobs, but reached without an access token.
PUBLIC = ("/token", "/sts/")
VERSIONS = ("v1", "v1beta1")
_LOCATION = re.compile(r"^(global|us|eu|[a-z]+(-[a-z]+)+[0-9]+)$")
SERVER_ERRORS = {500: ("INTERNAL", "Internal error encountered."),
                 502: ("UNAVAILABLE", "Bad gateway."),
                 503: ("UNAVAILABLE", "The service is currently unavailable.")}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(_store)]
JsonBody = Annotated[Any, Body()]


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    return body


def _where(version: str, project: str, location: str) -> None:
    if version not in VERSIONS:
        raise not_found(f"API version {version} not found.")
    if not _LOCATION.match(location):
        raise invalid(f"Location {location!r} is not valid.")


# --- OAuth ------------------------------------------------------------------------------------


def token(store: StoreDep, grant_type: Annotated[str | None, Form()] = None,
          assertion: Annotated[str | None, Form()] = None) -> Any:
    """An access token for a signed service-account JWT."""
    try:
        return store.grant(grant_type, assertion)
    except OAuthError as exc:
        return JSONResponse({"error": exc.error, "error_description": exc.description},
                            status_code=400)


async def sts_token(request: Request, store: StoreDep) -> Any:
    """Security Token Service: an access token for a federated subject token."""
    form = {k: str(v) for k, v in (await request.form()).items()}
    try:
        return store.exchange(form)
    except OAuthError as exc:
        return JSONResponse({"error": exc.error, "error_description": exc.description},
                            status_code=400)


def generate_access_token(store: StoreDep, project: str, email: str,
                          body: JsonBody) -> dict[str, Any]:
    """IAM Credentials: a token for the service account ``email`` (impersonation)."""
    return store.impersonate(email, _object(body))


class ServiceAccountKey(BaseModel):
    """A service account's public key, as IAM holds it once a key is created."""

    model_config = ConfigDict(extra="forbid")

    client_email: str = Field(min_length=3, max_length=200)
    private_key_id: str = Field(min_length=1, max_length=100)
    public_key_pem: str = Field(min_length=100, max_length=10_000)


def add_service_account(store: StoreDep, key: ServiceAccountKey) -> dict[str, bool]:
    """Admin: accept JWTs signed with this key."""
    store.add_key(key.client_email, key.private_key_id, key.public_key_pem)
    return {"added": True}


class NewKey(BaseModel):
    """Who a key made by the emulator is for."""

    model_config = ConfigDict(extra="forbid")

    client_email: str = Field("tunectl@tunectl-emulator.iam.gserviceaccount.com",
                              min_length=3, max_length=200)
    project_id: str = Field("tunectl-emulator", min_length=1, max_length=100)


def new_service_account_key(request: Request, store: StoreDep, who: NewKey) -> dict[str, str]:
    """Admin: a new service-account key file (private key included) whose token_uri is this
    emulator, as IAM's keys.create hands one out; write it to a file for
    GOOGLE_APPLICATION_CREDENTIALS."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = uuid.uuid4().hex
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    store.add_key(who.client_email, key_id, public.decode())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return {"type": "service_account", "project_id": who.project_id,
            "private_key_id": key_id, "private_key": private.decode(),
            "client_email": who.client_email, "client_id": str(uuid.uuid4().int)[:21],
            "token_uri": f"{_base(request)}/token"}


# --- Cloud Storage ----------------------------------------------------------------------------


def _base(request: Request) -> str:
    """Where this emulator is served (links in object resources point back at it)."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}{root}"


def get_object(request: Request, store: StoreDep, bucket: str, name: str,
               alt: str | None = None) -> Any:
    """An object's metadata, or its bytes with ``alt=media``."""
    stored = store.get_object(bucket, name)
    if alt == "media":
        return Response(stored.content, media_type=stored.content_type,
                        headers={"x-goog-hash": f"md5={stored.md5}"})
    return stored.to_api(_base(request))


def list_objects(
    request: Request, store: StoreDep, bucket: str, prefix: str = "", delimiter: str = "",
    start_offset: Annotated[str, Query(alias="startOffset")] = "",
    end_offset: Annotated[str, Query(alias="endOffset")] = "",
    include_trailing_delimiter: Annotated[bool, Query(alias="includeTrailingDelimiter")] = False,
    max_results: Annotated[int, Query(alias="maxResults")] = 0,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
    match_glob: Annotated[str | None, Query(alias="matchGlob")] = None,
    soft_deleted: Annotated[bool, Query(alias="softDeleted")] = False,
) -> dict[str, Any]:
    """One page of the bucket's objects (objects.list). ``versions`` lists what there is:
    the emulator keeps one generation of each object, as an unversioned bucket does."""
    if match_glob is not None or soft_deleted:
        raise ApiError(400, "INVALID_ARGUMENT", "The emulator does not support matchGlob or "
                       "softDeleted", storage=True)
    return store.list_objects(bucket, _base(request), prefix=prefix, delimiter=delimiter,
                              start_offset=start_offset, end_offset=end_offset,
                              include_trailing_delimiter=include_trailing_delimiter,
                              max_results=max_results, page_token=page_token)


def download_object(store: StoreDep, bucket: str, name: str) -> Response:
    """An object's bytes (the ``mediaLink`` of its resource)."""
    stored = store.get_object(bucket, name)
    return Response(stored.content, media_type=stored.content_type,
                    headers={"x-goog-hash": f"md5={stored.md5}"})


async def upload(request: Request, store: StoreDep, bucket: str,
                 upload_type: Annotated[str | None, Query(alias="uploadType")] = None,
                 name: str | None = None,
                 if_generation_match: Annotated[str | None, Query(
                     alias="ifGenerationMatch")] = None,
                 upload_id: str | None = None) -> Any:
    """Upload an object (media or multipart), or start a resumable upload session. A POST
    to a session's URI (``upload_id``) is one of its chunks, as a PUT is: gcsfs POSTs them,
    and Cloud Storage takes either."""
    if upload_id is not None:
        return await upload_chunk(request, store, bucket, upload_id)
    if upload_type is None:
        raise ApiError(400, "INVALID_ARGUMENT", "Required parameter: uploadType", storage=True)
    only_if_absent = _absent(if_generation_match)
    body = await request.body()
    if upload_type == "media":
        if not name:
            raise ApiError(400, "INVALID_ARGUMENT", "Required parameter: name", storage=True)
        return store.put_object(bucket, name, body, request.headers.get("content-type", ""),
                                {}, only_if_absent, "media", _base(request), {})
    if upload_type == "multipart":
        metadata, content, content_type = _multipart(request.headers.get("content-type", ""),
                                                     body)
        return store.put_object(bucket, str(metadata.get("name") or name or ""), content,
                                str(metadata.get("contentType") or content_type),
                                _custom(metadata), only_if_absent, "multipart",
                                _base(request), _hashes(metadata))
    if upload_type == "resumable":
        metadata = json.loads(body) if body.strip() else {}
        if not isinstance(metadata, dict):
            raise ApiError(400, "INVALID_ARGUMENT", "Metadata must be a JSON object",
                           storage=True)
        upload_id = store.start_upload(
            bucket, str(metadata.get("name") or name or ""),
            str(metadata.get("contentType") or request.headers.get("x-upload-content-type")
                or "application/octet-stream"), _custom(metadata), only_if_absent,
            _hashes(metadata))
        session = request.url.include_query_params(upload_id=upload_id)
        return Response(status_code=200, headers={"location": str(session)})
    raise ApiError(400, "INVALID_ARGUMENT", f"Invalid uploadType {upload_type!r}",
                   storage=True)


async def upload_chunk(request: Request, store: StoreDep, bucket: str,
                       upload_id: str) -> Any:
    """A resumable session's next chunk (or, with ``bytes */TOTAL``, its status)."""
    result = store.put_chunk(upload_id, request.headers.get("content-range"),
                             await request.body(), _base(request))
    if isinstance(result, dict):
        return result
    headers = {"range": f"bytes=0-{result - 1}"} if result else {}
    return Response(status_code=308, headers=headers)


def cancel_upload(store: StoreDep, bucket: str, upload_id: str) -> Response:
    """Cancel a resumable session (DELETE on its URI): 499, and it is gone (later requests
    to it are 404); nothing is stored."""
    store.cancel_upload(upload_id)
    return Response(status_code=499)


def _absent(if_generation_match: str | None) -> bool:
    if if_generation_match in (None, ""):
        return False
    if if_generation_match != "0":
        raise ApiError(400, "INVALID_ARGUMENT", "The emulator supports ifGenerationMatch=0 "
                       "only", storage=True)
    return True


def create_bucket(store: StoreDep, body: JsonBody, project: str | None = None) -> Any:
    """Create a bucket (buckets.insert)."""
    if not project:
        raise ApiError(400, "INVALID_ARGUMENT", "Required parameter: project", storage=True)
    return store.create_bucket(str(_object(body).get("name") or ""))


def get_bucket(store: StoreDep, bucket: str) -> Any:
    """A bucket (buckets.get)."""
    return store.get_bucket(bucket)


def delete_object(store: StoreDep, bucket: str, name: str,
                  if_generation_match: Annotated[str | None, Query(
                      alias="ifGenerationMatch")] = None) -> Response:
    """Delete an object (only the given generation, with ``ifGenerationMatch``)."""
    store.delete_object(bucket, name, if_generation_match)
    return Response(status_code=204)


def _hashes(metadata: dict[str, Any]) -> dict[str, str]:
    """The md5Hash and crc32c an object resource gives for its bytes."""
    return {k: str(metadata[k]) for k in ("md5Hash", "crc32c") if metadata.get(k)}


def _custom(metadata: dict[str, Any]) -> dict[str, str]:
    custom = metadata.get("metadata") or {}
    if not isinstance(custom, dict):
        raise ApiError(400, "INVALID_ARGUMENT", "metadata.metadata must be an object",
                       storage=True)
    return {str(k): str(v) for k, v in custom.items()}


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
    """The JSON metadata and the media of a ``multipart/related`` upload. Line breaks may be
    CRLF or a bare LF (gcsfs sends LF, and Cloud Storage takes it); a delimiter counts only
    at the start of a line, so the media may hold the boundary string anywhere else."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or match is None:
        raise ApiError(400, "INVALID_ARGUMENT", "A multipart upload needs "
                       "Content-Type: multipart/related; boundary=…", storage=True)
    delimiter = re.compile(rb"\r?\n--" + re.escape(match.group(1).encode()))
    # The first delimiter may open the body; the line break before any other is its own.
    parts = delimiter.split(b"\n" + body)[1:]
    sections = []
    for part in parts:
        if part.startswith(b"--"):  # the close delimiter: the rest is epilogue
            break
        part = re.sub(rb"^[ \t]*\r?\n", b"", part)  # padding and the delimiter's line end
        blank = re.search(rb"(?:^|\r?\n)\r?\n", part)
        if blank is None:
            break
        head, data = part[:blank.start()], part[blank.end():]
        headers = dict(line.split(":", 1) for line in head.decode("latin-1").splitlines()
                       if ":" in line)
        kind = next((v.strip() for k, v in headers.items()
                     if k.strip().lower() == "content-type"), "")
        sections.append((kind, data))
    if len(sections) != 2:
        raise ApiError(400, "INVALID_ARGUMENT", "A multipart upload has a metadata part and "
                       "a media part", storage=True)
    try:
        metadata = json.loads(sections[0][1])
    except ValueError:
        raise ApiError(400, "INVALID_ARGUMENT", "The metadata part is not JSON",
                       storage=True) from None
    if not isinstance(metadata, dict):
        raise ApiError(400, "INVALID_ARGUMENT", "The metadata part must be a JSON object",
                       storage=True)
    return metadata, sections[1][1], sections[1][0]


# --- Vertex AI --------------------------------------------------------------------------------


def create_job(store: StoreDep, version: str, project: str, location: str,
               body: JsonBody) -> dict[str, Any]:
    """Create a tuning job; it starts JOB_STATE_PENDING."""
    _where(version, project, location)
    return store.create_job(project, location, _object(body))


def list_jobs(store: StoreDep, version: str, project: str, location: str,
              filter: str | None = None,
              page_size: Annotated[int, Query(alias="pageSize")] = 0,
              page_token: Annotated[str | None, Query(alias="pageToken")] = None,
              ) -> dict[str, Any]:
    """One page of tuning jobs, newest first."""
    _where(version, project, location)
    return store.list_jobs(project, location, filter, page_size, page_token)


def get_job(store: StoreDep, version: str, project: str, location: str,
            job_id: str) -> dict[str, Any]:
    """One tuning job."""
    _where(version, project, location)
    return store.get_job(f"projects/{project}/locations/{location}/tuningJobs/{job_id}")


def cancel_job(store: StoreDep, version: str, project: str, location: str,
               job_id: str) -> dict[str, Any]:
    """Start cancelling a tuning job; the answer is empty."""
    _where(version, project, location)
    store.cancel_job(f"projects/{project}/locations/{location}/tuningJobs/{job_id}")
    return {}


def generate_content(store: StoreDep, version: str, project: str, location: str,
                     endpoint_id: str, body: JsonBody) -> dict[str, Any]:
    """The tuned model answers."""
    _where(version, project, location)
    return store.generate(project, location, endpoint_id, _object(body))


_JOBS = "/{version}/projects/{project}/locations/{location}/tuningJobs"
ROUTES: list[tuple[str, str, Callable[..., Any]]] = [
    ("POST", "/token", token),
    ("POST", "/sts/v1/token", sts_token),
    ("POST", "/iamcredentials/v1/projects/{project}/serviceAccounts/{email}"
             ":generateAccessToken", generate_access_token),
    ("POST", "/_emulator/service-accounts", add_service_account),
    ("POST", "/_emulator/service-accounts/keys", new_service_account_key),
    ("POST", "/storage/v1/b", create_bucket),
    ("GET", "/storage/v1/b/{bucket}", get_bucket),
    ("GET", "/storage/v1/b/{bucket}/o", list_objects),
    ("GET", "/storage/v1/b/{bucket}/o/", list_objects),
    ("GET", "/storage/v1/b/{bucket}/o/{name:path}", get_object),
    ("DELETE", "/storage/v1/b/{bucket}/o/{name:path}", delete_object),
    ("GET", "/download/storage/v1/b/{bucket}/o/{name:path}", download_object),
    ("POST", "/upload/storage/v1/b/{bucket}/o", upload),
    ("PUT", "/upload/storage/v1/b/{bucket}/o", upload_chunk),
    ("DELETE", "/upload/storage/v1/b/{bucket}/o", cancel_upload),
    ("POST", _JOBS, create_job),
    ("GET", _JOBS, list_jobs),
    ("GET", _JOBS + "/{job_id}", get_job),
    ("POST", _JOBS + "/{job_id}:cancel", cancel_job),
    ("POST", "/{version}/projects/{project}/locations/{location}/endpoints/{endpoint_id}"
             ":generateContent", generate_content),
    *admin_routes(Scenario),
]


# --- Errors -----------------------------------------------------------------------------------


def _google(code: int, status: str, message: str) -> JSONResponse:
    return JSONResponse(ApiError(code, status, message).body(), status_code=code)


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.code)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return _google(404, "NOT_FOUND", f"The requested URL {route_path(request.scope)} was "
                       "not found on this server.")
    return _google(exc.status_code, "INVALID_ARGUMENT", str(exc.detail))


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 becomes the 400 INVALID_ARGUMENT Google sends."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "body"
    message = "Invalid JSON payload received." if first["type"] == "json_invalid" \
        else f"Invalid value at '{where}': {first['msg']}"
    return _google(400, "INVALID_ARGUMENT", message)


def _server_error(request: Request, exc: Exception) -> JSONResponse:
    return _google(500, *SERVER_ERRORS[500])


class GoogleRefusals:
    """401, 429 and 5xx as Google words them (429 carries no Retry-After)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def request_id(self) -> str:
        return uuid.uuid4().hex

    def missing_key(self, request_id: str) -> Response:
        return _google(401, "UNAUTHENTICATED", "Request is missing required authentication "
                       "credential. Expected OAuth 2 access token, login cookie or other valid "
                       "authentication credential.")

    def wrong_key(self, masked: str, request_id: str) -> Response:
        self.store.count("tokens_refused")
        return _google(401, "UNAUTHENTICATED", "Request had invalid authentication "
                       "credentials. Expected OAuth 2 access token, login cookie or other "
                       "valid authentication credential.")

    def throttled(self, fault: Throttle, request_id: str) -> Response:
        return _google(429, "RESOURCE_EXHAUSTED", "Quota exceeded for "
                       "aiplatform.googleapis.com/tuning_requests_per_minute. Please retry.")

    def server_error(self, status: int, request_id: str) -> Response:
        return _google(status, *SERVER_ERRORS[status])


# --- Factory ----------------------------------------------------------------------------------


def create_app(
    scenario: Scenario | None = None,
    *,
    api_key: str | None = None,
    clock: Callable[[], float] = time.time,
    buckets: Iterable[str] = (),
) -> FastAPI:
    """The emulator as an ASGI app (routes as above, admin at /_emulator).

    Args:
        scenario: how it behaves (default: a well-behaved service).
        api_key: a bearer token accepted besides those the token endpoint issued.
        clock: seconds since the epoch; inject a fake one to drive jobs and token expiry
            without sleeping.
        buckets: Cloud Storage buckets that exist from the start (others are created with
            ``POST /storage/v1/b``; objects elsewhere are 404).
    """
    store = Store(scenario or Scenario(), clock, buckets)
    return emulator_app("Google Vertex AI + Cloud Storage emulator (tunectl)", store, ROUTES, {
        ApiError: _api_error, StarletteHTTPException: _http_error,
        RequestValidationError: _validation_error, Exception: _server_error,
    }, refusals=GoogleRefusals(store), api_key=api_key, api_prefix=API_PREFIXES,
        accepts=store.token_valid, public=PUBLIC)


#: Where `tunectl emulator` mounts this emulator.
PREFIX = "/google"
#: The bucket `tunectl emulator` starts with (the demo's).
DEMO_BUCKET = "tunectl-demo"


def mount(*, job_duration_s: float, api_key: str | None) -> EmulatorMount:
    """The emulator as ``tunectl emulator`` serves it: under /google, which is then both
    TUNECTL_VERTEX_BASE_URL and TUNECTL_GCS_BASE_URL (and the token_uri's base)."""
    return EmulatorMount("Google (Vertex AI, Cloud Storage, OAuth)", PREFIX, "",
                         create_app(Scenario(job_duration_s=job_duration_s), api_key=api_key,
                                    buckets=[DEMO_BUCKET]))


def serve(host: str, port: int, scenario: Scenario | None = None,
          api_key: str | None = None) -> None:
    """Run the emulator alone (at the root) with uvicorn until interrupted."""
    emulation.serve(host, port, create_app(scenario, api_key=api_key))
