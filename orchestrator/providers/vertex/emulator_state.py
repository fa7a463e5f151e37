"""In-memory state of the Google emulator: the Scenario, service-account keys and the
access tokens issued for them, Cloud Storage objects and resumable upload sessions, tuning
jobs and the endpoints of their tuned models, each driven by a clock.

Nothing here knows HTTP (emulator.py maps it onto routes). Jobs advance lazily: a job's
state is computed from its creation time and the clock, so an injected clock makes a whole
lifecycle deterministic without a background thread. Access tokens expire on the same
clock; the JWT a client signs to get one is checked against real time (its client stamps
it with real time). Every public Store method holds the lock.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import google.auth.exceptions
import google.auth.jwt
import google_crc32c
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.datasets.issues import IssueLog
from orchestrator.datasets.rules import rules_for
from orchestrator.datasets.vertex_format import check_gemini
from orchestrator.providers.emulation import (
    FaultScenario,
    FaultStore,
    Latency,
    ServerErrors,
    Throttle,
)
from orchestrator.providers.vertex.translate import tunable

#: Where the fault knobs apply unless a scenario says otherwise: Vertex and Cloud Storage.
API_ROUTES = r"^/(v1|v1beta1|storage|upload|download)/"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: The scope a source account's token has for impersonating another (tokens are not bound
#: to their scopes here: either kind may call every API).
IAM = "https://www.googleapis.com/auth/iam"
#: Cloud Storage's own scopes (gcsfs asks for one of these, not cloud-platform).
DEVSTORAGE = tuple(f"https://www.googleapis.com/auth/devstorage.{access}"
                   for access in ("full_control", "read_write", "read_only"))
#: A token is granted for a request whose scope names at least one of these.
GRANTABLE = frozenset({CLOUD_PLATFORM, IAM, *DEVSTORAGE})
ADAPTER_SIZES = ("ADAPTER_SIZE_UNSPECIFIED", "ADAPTER_SIZE_ONE", "ADAPTER_SIZE_TWO",
                 "ADAPTER_SIZE_FOUR", "ADAPTER_SIZE_EIGHT", "ADAPTER_SIZE_SIXTEEN",
                 "ADAPTER_SIZE_THIRTY_TWO")
#: Share of a job's duration spent pending, and a cancel takes (CANCELLING).
PENDING_SHARE, CANCEL_SHARE = 0.1, 0.1
LIVE = frozenset({"JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"})
MAX_PAGE, DEFAULT_PAGE = 100, 50
#: objects.list answers at most this many items and prefixes a page (and so by default).
OBJECTS_PAGE = 1000
#: The fields of TuningJob, SupervisedTuningSpec and SupervisedHyperParameters in the v1
#: API (tuning_job.proto); any other name in a request is refused.
TUNING_JOB_FIELDS = frozenset({
    "baseModel", "preTunedModel", "supervisedTuningSpec", "name", "tunedModelDisplayName",
    "description", "state", "createTime", "startTime", "endTime", "updateTime", "error",
    "labels", "experiment", "tunedModel", "tuningDataStats", "encryptionSpec",
    "serviceAccount", "evaluateDatasetRuns"})
SUPERVISED_TUNING_SPEC_FIELDS = frozenset({
    "trainingDatasetUri", "validationDatasetUri", "hyperParameters",
    "exportLastCheckpointOnly", "evaluationConfig"})
HYPER_PARAMETER_FIELDS = frozenset({"epochCount", "learningRateMultiplier", "adapterSize"})
_BUCKET = re.compile(r"[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_FILTER_TERM = re.compile(r'^labels\.([a-z][a-z0-9_-]*)\s*=\s*(?:"([^"]*)"|([a-z0-9_-]*))$')


class ApiError(Exception):
    """A failure in Google's shape, ``{"error": {"code", "message", "status"}}``."""

    def __init__(self, code: int, status: str, message: str, *, storage: bool = False) -> None:
        super().__init__(message)
        self.code, self.status, self.message, self.storage = code, status, message, storage

    def body(self) -> dict[str, Any]:
        """The error body; Cloud Storage's has ``errors`` instead of ``status``."""
        if self.storage:
            reason = {400: "invalid", 401: "required", 404: "notFound", 409: "conflict",
                      410: "gone", 412: "conditionNotMet"}.get(self.code, "backendError")
            return {"error": {"code": self.code, "message": self.message, "errors": [
                {"message": self.message, "domain": "global", "reason": reason}]}}
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


class OAuthError(Exception):
    """A token endpoint refusal: ``{"error", "error_description"}`` (RFC 6749)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


def invalid(message: str) -> ApiError:
    """400 INVALID_ARGUMENT."""
    return ApiError(400, "INVALID_ARGUMENT", message)


def not_found(message: str, *, storage: bool = False) -> ApiError:
    """404 NOT_FOUND."""
    return ApiError(404, "NOT_FOUND", message, storage=storage)


# --- Scenario ---------------------------------------------------------------------------------


class Failure(BaseModel):
    """How jobs end when they do not succeed: a google.rpc.Status and the end state."""

    model_config = ConfigDict(extra="forbid")

    code: int = Field(3, ge=1, le=16)
    message: str = "Dataset validation failed."
    state: Literal["JOB_STATE_FAILED", "JOB_STATE_EXPIRED",
                   "JOB_STATE_PARTIALLY_SUCCEEDED"] = "JOB_STATE_FAILED"


class Scenario(FaultScenario):
    """How the emulator behaves; the defaults are a well-behaved service."""

    job_duration_s: float = Field(3.0, ge=0)  # 0: SUCCEEDED on the first read after creation
    fail_jobs: Failure | None = None  # every new job ends this way
    #: Lifetime of an access token, in the emulator's clock.
    token_lifetime_s: float = Field(3600.0, gt=0)
    #: The next N resumable chunks keep only their first ``partial_chunk_bytes`` bytes
    #: (0: none), as a server that persisted part of a chunk answers 308 with less.
    partial_chunks: int = Field(0, ge=0)
    partial_chunk_bytes: int = Field(0, ge=0)
    #: The next N resumable chunk requests find their session expired: 410, and it is gone.
    expire_sessions: int = Field(0, ge=0)
    #: A list with a filter is refused (400 INVALID_ARGUMENT), as a server that does not
    #: support filtering on labels would.
    refuse_filters: bool = False
    throttle: Throttle = Field(default_factory=lambda: Throttle(routes=API_ROUTES))
    server_errors: ServerErrors = Field(default_factory=lambda: ServerErrors(routes=API_ROUTES))
    latency: Latency = Field(default_factory=lambda: Latency(routes=API_ROUTES))


# --- Objects ----------------------------------------------------------------------------------


def rfc3339(at: float) -> str:
    """Google's ``2026-08-01T10:00:00.123456Z``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class StoredObject:
    """A Cloud Storage object."""

    bucket: str
    name: str
    content: bytes
    content_type: str
    metadata: dict[str, str]
    generation: int
    created_at: float

    @property
    def md5(self) -> str:
        """The base64 MD5 of the content, as Cloud Storage reports it."""
        return md5_of(self.content)

    def to_api(self, base: str) -> dict[str, Any]:
        """The Object resource (int64 fields as strings), its links under ``base``."""
        md5 = self.md5
        path = f"{quote(self.bucket, safe='')}/o/{quote(self.name, safe='')}"
        return {"kind": "storage#object", "id": f"{self.bucket}/{self.name}/{self.generation}",
                "name": self.name,
                "bucket": self.bucket, "generation": str(self.generation),
                "metageneration": "1", "contentType": self.content_type,
                "size": str(len(self.content)), "md5Hash": md5,
                "crc32c": crc32c_of(self.content), "metadata": self.metadata,
                "timeCreated": rfc3339(self.created_at), "updated": rfc3339(self.created_at),
                "storageClass": "STANDARD", "etag": md5[:12],
                "selfLink": f"{base}/storage/v1/b/{path}",
                "mediaLink": f"{base}/download/storage/v1/b/{path}?generation="
                             f"{self.generation}&alt=media"}


@dataclass
class UploadSession:
    """A resumable upload: the object to create and the bytes received so far."""

    bucket: str
    name: str
    content_type: str
    metadata: dict[str, str]
    only_if_absent: bool
    #: The md5Hash and crc32c the client gave, checked once every byte is in.
    hashes: dict[str, str]
    received: bytearray = field(default_factory=bytearray)


@dataclass
class TuningJob:
    """A tuning job: the request as echoed and where it is on its timeline."""

    name: str
    project: str
    location: str
    body: dict[str, Any]
    created_at: float
    duration: float
    failure: Failure | None
    examples: list[tuple[str, str]]
    endpoint_id: str
    model_id: str
    cancel_at: float | None = None

    def state(self, now: float) -> str:
        """The JobState the API reports at ``now``."""
        if self.cancel_at is not None:
            done = now >= self.cancel_at + self.duration * CANCEL_SHARE
            return "JOB_STATE_CANCELLED" if done else "JOB_STATE_CANCELLING"
        elapsed = now - self.created_at
        if elapsed >= self.duration:
            return self.failure.state if self.failure else "JOB_STATE_SUCCEEDED"
        return "JOB_STATE_PENDING" if elapsed < self.duration * PENDING_SHARE \
            else "JOB_STATE_RUNNING"

    @property
    def endpoint(self) -> str:
        """The tuned model's endpoint resource name."""
        return f"projects/{self.project}/locations/{self.location}/endpoints/{self.endpoint_id}"

    def to_api(self, now: float) -> dict[str, Any]:
        """The TuningJob at ``now``."""
        state = self.state(now)
        start = self.created_at + self.duration * PENDING_SHARE
        data: dict[str, Any] = {**self.body, "name": self.name, "state": state,
                                "createTime": rfc3339(self.created_at),
                                "updateTime": rfc3339(min(now, self.created_at + self.duration))}
        spec = data["supervisedTuningSpec"] = dict(self.body["supervisedTuningSpec"])
        hyper = dict(spec.get("hyperParameters") or {})
        hyper["epochCount"] = str(int(hyper.get("epochCount", 3)))  # int64: a string
        hyper.setdefault("learningRateMultiplier", 1.0)
        hyper.setdefault("adapterSize", "ADAPTER_SIZE_FOUR")
        spec["hyperParameters"] = hyper
        if now >= start and state != "JOB_STATE_PENDING":
            data["startTime"] = rfc3339(start)
        if state not in LIVE:
            ended = self.cancel_at + self.duration * CANCEL_SHARE if self.cancel_at is not None \
                else self.created_at + self.duration
            data["endTime"] = rfc3339(ended)
        if state == "JOB_STATE_SUCCEEDED":
            data["tunedModel"] = {
                "model": f"projects/{self.project}/locations/{self.location}/models/"
                         f"{self.model_id}@1", "endpoint": self.endpoint}
            data["experiment"] = (f"projects/{self.project}/locations/{self.location}/"
                                  f"metadataStores/default/contexts/tuning-experiment-"
                                  f"{self.model_id}")
            characters = sum(len(q) + len(a) for q, a in self.examples)
            data["tuningDataStats"] = {"supervisedTuningDataStats": {
                "tuningDatasetExampleCount": str(len(self.examples)),
                "totalTuningCharacterCount": str(characters),
                "totalBillableTokenCount": str(max(1, characters // 4)),
                "tuningStepCount": str(max(1, len(self.examples) // 8))}}
        elif state == "JOB_STATE_CANCELLED":
            data["error"] = {"code": 1, "message": "CANCELED", "details": []}
        elif state not in LIVE and self.failure is not None:
            data["error"] = {"code": self.failure.code, "message": self.failure.message,
                             "details": []}
        return data

    def answer(self, prompt: str) -> str:
        """What the tuned model says: the reply it was trained on for this prompt, if any."""
        wanted = " ".join(prompt.lower().split())
        for question, reply in self.examples:
            if " ".join(question.lower().split()) == wanted:
                return reply
        display = self.body.get("tunedModelDisplayName") or self.name
        return f"({display}, tuned on {len(self.examples)} examples) You asked: {prompt}"


# --- Store ------------------------------------------------------------------------------------


class Store(FaultStore[Scenario]):
    """Keys, tokens, buckets, objects, upload sessions, tuning jobs and counters, behind one
    lock. ``buckets`` exist from the start (and again after a reset)."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float],
                 buckets: Iterable[str] = ()) -> None:
        self._initial_buckets = frozenset(buckets)
        super().__init__(scenario, clock)

    def _reset(self) -> None:
        super()._reset()
        self._buckets: set[str] = set(self._initial_buckets)
        self._keys: dict[str, tuple[str, str]] = {}  # key id → (client email, public PEM)
        self._tokens: dict[str, tuple[str, float]] = {}  # token → (email, expires at)
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._sessions: dict[str, UploadSession] = {}
        self._finished: dict[str, tuple[str, str]] = {}  # session id → its object
        self._jobs: dict[str, TuningJob] = {}
        self._generation = 0
        self._counts: Counter[str] = Counter()

    def stats(self) -> dict[str, Any]:
        """Objects, uploads by kind, jobs by state, tokens issued and refused, and faults."""
        with self._lock:
            now = self._clock()
            return {"objects": len(self._objects), "tuning_jobs": len(self._jobs),
                    "jobs_by_state": dict(Counter(j.state(now) for j in self._jobs.values())),
                    "service_accounts": len(self._keys), **dict(self._counts),
                    **self.fault_stats()}

    # Tokens

    def add_key(self, client_email: str, key_id: str, public_key_pem: str) -> None:
        """Register a service account's public key (as creating a key in IAM does)."""
        with self._lock:
            self._keys[key_id] = (client_email, public_key_pem)

    def grant(self, grant_type: str | None, assertion: str | None) -> dict[str, Any]:
        """An access token for a service account's signed JWT (the jwt-bearer grant).

        Raises:
            OAuthError: another grant, an unknown key, a bad signature, audience or scope,
                or a JWT outside its validity.
        """
        if grant_type != JWT_BEARER:
            raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        if not assertion:
            raise OAuthError("invalid_request", "Missing required parameter: assertion")
        try:
            header = json.loads(base64.urlsafe_b64decode(
                assertion.split(".")[0] + "==").decode())
        except (ValueError, UnicodeDecodeError):
            raise OAuthError("invalid_grant", "Invalid JWT: not a signed JWT") from None
        with self._lock:
            key = self._keys.get(str(header.get("kid")))
            if key is None:
                self._counts["token_refusals"] += 1
                raise OAuthError("invalid_grant", "Invalid JWT Signature.")
            email, public = key
            try:
                claims = google.auth.jwt.decode(assertion, certs={str(header["kid"]): public},
                                                clock_skew_in_seconds=300)
            except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
                self._counts["token_refusals"] += 1
                raise OAuthError("invalid_grant", f"Invalid JWT: {exc}") from None
            scopes = str(claims.get("scope", "")).split()
            if claims.get("iss") != email or not str(claims.get("aud", "")).endswith("/token") \
                    or not GRANTABLE & set(scopes):
                self._counts["token_refusals"] += 1
                raise OAuthError("invalid_grant", "Invalid JWT: iss, aud or scope is wrong "
                                 f"(scope must include {CLOUD_PLATFORM}, {IAM} or a "
                                 "devstorage scope)")
            token, lifetime, _ = self._issue(email)
            return {"access_token": token, "expires_in": int(lifetime), "token_type": "Bearer"}

    def exchange(self, form: dict[str, str]) -> dict[str, Any]:
        """An STS token exchange (Workload Identity Federation): an access token for a
        subject token presented for a workload or workforce pool provider. The emulator has
        no identity provider, so any non-empty subject token is taken.

        Raises:
            OAuthError: another grant, no subject token, another audience or scope.
        """
        if form.get("grant_type") != TOKEN_EXCHANGE:
            raise OAuthError("unsupported_grant_type",
                             f"Invalid grant_type: {form.get('grant_type')}")
        audience = form.get("audience", "")
        if not form.get("subject_token") or not audience.startswith("//iam.googleapis.com/"):
            raise OAuthError("invalid_request", "A subject_token and a workload or workforce "
                             "pool provider audience are required.")
        if not GRANTABLE & set(form.get("scope", "").split()):
            raise OAuthError("invalid_scope", f"The scope must include {CLOUD_PLATFORM}, "
                             f"{IAM} or a devstorage scope")
        with self._lock:
            token, lifetime, _ = self._issue(f"principal:{audience}", "sts_exchanges")
        return {"access_token": token, "expires_in": int(lifetime), "token_type": "Bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}

    def impersonate(self, email: str, body: dict[str, Any]) -> dict[str, Any]:
        """IAM Credentials' generateAccessToken: a token for ``email`` (the caller's own
        token was checked by the middleware)."""
        scopes = body.get("scope")
        if not isinstance(scopes, list) or CLOUD_PLATFORM not in scopes:
            raise invalid(f"scope must include {CLOUD_PLATFORM}")
        with self._lock:
            token, _, expires = self._issue(email, "impersonations")
        return {"accessToken": token,
                "expireTime": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _issue(self, who: str, counter: str = "tokens_issued") -> tuple[str, float, float]:
        """A new access token for ``who``: (token, lifetime, expiry); the caller holds the
        lock."""
        lifetime = self._scenario.token_lifetime_s
        token = f"ya29.emulator-{secrets.token_urlsafe(24)}"
        expires = self._tokens[token] = (who, self._clock() + lifetime)
        self._counts[counter] += 1
        return token, lifetime, expires[1]

    def token_valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired (by the clock)."""
        with self._lock:
            issued = self._tokens.get(token)
            return issued is not None and self._clock() < issued[1]

    def count(self, what: str) -> None:
        """Count an event for the stats (a refused token …)."""
        with self._lock:
            self._counts[what] += 1

    # Cloud Storage

    def create_bucket(self, name: str) -> dict[str, Any]:
        """A new bucket (buckets.insert); 409 if it exists."""
        if not _BUCKET.fullmatch(name):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid bucket name: '{name}'",
                           storage=True)
        with self._lock:
            if name in self._buckets:
                raise ApiError(409, "ALREADY_EXISTS", "Your previous request to create the "
                               "named bucket succeeded and you already own it.", storage=True)
            self._buckets.add(name)
            return _bucket_resource(name)

    def get_bucket(self, name: str) -> dict[str, Any]:
        """A bucket's resource (buckets.get)."""
        with self._lock:
            self._bucket(name)
            return _bucket_resource(name)

    def _bucket(self, bucket: str) -> None:
        """Raise 404 for a bucket that does not exist; the caller holds the lock."""
        if bucket not in self._buckets:
            raise not_found("The specified bucket does not exist.", storage=True)

    def put_object(self, bucket: str, name: str, content: bytes, content_type: str,
                   metadata: dict[str, str], only_if_absent: bool, kind: str,
                   base: str, hashes: dict[str, str]) -> dict[str, Any]:
        """Create (or replace) an object.

        Raises:
            ApiError: 404 for an unknown bucket, 400 when ``hashes`` (md5Hash, crc32c) are
                not the content's (nothing is stored), 412 when ``only_if_absent`` and it
                exists.
        """
        _check_object_name(name)
        _check_hashes(hashes, content)
        with self._lock:
            self._bucket(bucket)
            if only_if_absent and (bucket, name) in self._objects:
                raise ApiError(412, "FAILED_PRECONDITION", "At least one of the pre-conditions "
                               "you specified did not hold.", storage=True)
            self._generation += 1
            stored = StoredObject(bucket, name, content, content_type or
                                  "application/octet-stream", dict(metadata), self._generation,
                                  self._clock())
            self._objects[(bucket, name)] = stored
            self._counts[f"uploads_{kind}"] += 1
            return stored.to_api(base)

    def get_object(self, bucket: str, name: str) -> StoredObject:
        """An object (its bytes too)."""
        with self._lock:
            self._bucket(bucket)
            stored = self._objects.get((bucket, name))
            if stored is None:
                raise not_found(f"No such object: {bucket}/{name}", storage=True)
            return stored

    def list_objects(self, bucket: str, base: str, *, prefix: str = "", delimiter: str = "",
                     start_offset: str = "", end_offset: str = "",
                     include_trailing_delimiter: bool = False, max_results: int = 0,
                     page_token: str | None = None) -> dict[str, Any]:
        """One page of a bucket's objects (objects.list), in lexicographic order of name.

        Names start with ``prefix`` and lie in [``start_offset``, ``end_offset``). With a
        ``delimiter``, a name holding it after the prefix is listed once, cut after its first
        delimiter, in ``prefixes`` (and in ``items`` too if ``include_trailing_delimiter`` and
        that cut is the whole name). A page has at most ``max_results`` (0: 1000, and never
        more) items and prefixes together; ``nextPageToken`` marks the last one, so a name
        created before it since is not listed. Empty ``items`` and ``prefixes`` are left out.

        Raises:
            ApiError: 404 for an unknown bucket, 400 for a negative ``max_results`` or a page
                token this emulator did not give.
        """
        if max_results < 0:
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid value for maxResults: "
                           f"{max_results}", storage=True)
        size = OBJECTS_PAGE if max_results == 0 else min(max_results, OBJECTS_PAGE)
        after = _list_position(page_token)
        with self._lock:
            self._bucket(bucket)
            names = sorted(name for (where, name) in self._objects if where == bucket
                           and name.startswith(prefix) and name >= start_offset
                           and (not end_offset or name < end_offset))
            entries: list[tuple[str, int]] = []  # (name, 0) for an item, (prefix, 1)
            for name in names:
                cut = name.find(delimiter, len(prefix)) if delimiter else -1
                if cut < 0:
                    entries.append((name, 0))
                    continue
                folder = name[:cut + len(delimiter)]
                if include_trailing_delimiter and folder == name:
                    entries.append((name, 0))
                if not entries or entries[-1] != (folder, 1):
                    entries.append((folder, 1))
            entries.sort()
            rest = [entry for entry in entries if after is None or entry > after]
            page = rest[:size]
            out: dict[str, Any] = {"kind": "storage#objects"}
            if len(rest) > size:
                out["nextPageToken"] = base64.urlsafe_b64encode(
                    json.dumps(list(page[-1])).encode()).decode()
            prefixes = [key for key, kind in page if kind == 1]
            if prefixes:
                out["prefixes"] = prefixes
            items = [self._objects[(bucket, key)].to_api(base) for key, kind in page
                     if kind == 0]
            if items:
                out["items"] = items
            return out

    def delete_object(self, bucket: str, name: str, if_generation_match: str | None) -> None:
        """Delete an object, with ``ifGenerationMatch`` only that generation (else 412)."""
        with self._lock:
            self._bucket(bucket)
            stored = self._objects.get((bucket, name))
            if stored is None:
                raise not_found(f"No such object: {bucket}/{name}", storage=True)
            if if_generation_match not in (None, "", str(stored.generation)):
                raise ApiError(412, "FAILED_PRECONDITION", "At least one of the pre-conditions "
                               "you specified did not hold.", storage=True)
            del self._objects[(bucket, name)]
            self._counts["objects_deleted"] += 1

    def start_upload(self, bucket: str, name: str, content_type: str,
                     metadata: dict[str, str], only_if_absent: bool,
                     hashes: dict[str, str]) -> str:
        """A resumable upload session id."""
        _check_object_name(name)
        with self._lock:
            self._bucket(bucket)
            if only_if_absent and (bucket, name) in self._objects:
                raise ApiError(412, "FAILED_PRECONDITION", "At least one of the pre-conditions "
                               "you specified did not hold.", storage=True)
            upload_id = secrets.token_urlsafe(24)
            self._sessions[upload_id] = UploadSession(bucket, name, content_type, metadata,
                                                      only_if_absent, dict(hashes))
            return upload_id

    def put_chunk(self, upload_id: str, content_range: str | None, chunk: bytes,
                  base: str) -> int | dict[str, Any]:
        """Add a chunk (``Content-Range: bytes A-B/TOTAL``, or ``bytes */TOTAL`` to ask);
        return the bytes persisted so far, or the object once the last byte arrived.

        Raises:
            ApiError: an unknown (404) or expired (410) session, a malformed range, a gap,
                or bytes whose hashes are not those the session started with (400; the
                session ends and nothing is stored).
        """
        match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range or "")
        if match is None:
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid Content-Range {content_range!r}",
                           storage=True)
        first, last, total = match.groups()
        with self._lock:
            session = self._sessions.get(upload_id)
            if session is None:
                done = self._done_session(upload_id, base)
                if done is not None:
                    return done
                raise not_found("No such upload session", storage=True)
            if self._scenario.expire_sessions > 0:
                self._scenario.expire_sessions -= 1
                del self._sessions[upload_id]
                raise ApiError(410, "GONE", "The upload session has expired.", storage=True)
            if first is not None:
                start, end = int(first), int(last)
                if end - start + 1 != len(chunk) or start > len(session.received):
                    raise ApiError(400, "INVALID_ARGUMENT", "The chunk does not match its "
                                   "Content-Range or leaves a gap", storage=True)
                if total != "*" and end + 1 < int(total) and len(chunk) % (256 << 10):
                    raise ApiError(400, "INVALID_ARGUMENT", "A chunk other than the last must "
                                   "be a multiple of 256 KiB", storage=True)
                if self._scenario.partial_chunks > 0:
                    self._scenario.partial_chunks -= 1
                    chunk = chunk[:self._scenario.partial_chunk_bytes]
                session.received[start:] = chunk
            if total != "*" and len(session.received) == int(total):
                del self._sessions[upload_id]
                _check_hashes(session.hashes, bytes(session.received))
                self._finished[upload_id] = (session.bucket, session.name)
                if session.only_if_absent and (session.bucket, session.name) in self._objects:
                    raise ApiError(412, "FAILED_PRECONDITION", "At least one of the "
                                   "pre-conditions you specified did not hold.", storage=True)
                self._generation += 1
                stored = StoredObject(session.bucket, session.name, bytes(session.received),
                                      session.content_type, session.metadata,
                                      self._generation, self._clock())
                self._objects[(session.bucket, session.name)] = stored
                self._counts["uploads_resumable"] += 1
                return stored.to_api(base)
            return len(session.received)

    def cancel_upload(self, upload_id: str) -> None:
        """Forget a resumable session before its last byte (404 if there is none)."""
        with self._lock:
            if self._sessions.pop(upload_id, None) is None:
                raise not_found("No such upload session", storage=True)
            self._counts["uploads_cancelled"] += 1

    def _done_session(self, upload_id: str, base: str) -> dict[str, Any] | None:
        """A finished session's object (a client asking again after losing the answer)."""
        where = self._finished.get(upload_id)
        stored = self._objects.get(where) if where else None
        return stored.to_api(base) if stored else None

    # Tuning jobs

    def create_job(self, project: str, location: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a tuning job from a TuningJob body (it starts JOB_STATE_PENDING).

        Raises:
            ApiError: an unknown, missing or invalid field, a model Vertex does not tune, or
                a dataset that is not in the bucket.
        """
        body = _known(body, TUNING_JOB_FIELDS, "tuning_job")
        base = body.get("baseModel")
        if not isinstance(base, str) or not tunable(base):
            raise invalid(f"Base model {base!r} is not supported for tuning.")
        spec = body.get("supervisedTuningSpec")
        if not isinstance(spec, dict):
            raise invalid("supervisedTuningSpec.trainingDatasetUri is required.")
        spec = body["supervisedTuningSpec"] = _known(
            spec, SUPERVISED_TUNING_SPEC_FIELDS, "tuning_job.supervised_tuning_spec")
        if not isinstance(spec.get("trainingDatasetUri"), str):
            raise invalid("supervisedTuningSpec.trainingDatasetUri is required.")
        if isinstance(spec.get("hyperParameters"), dict):
            spec["hyperParameters"] = _known(
                spec["hyperParameters"], HYPER_PARAMETER_FIELDS,
                "tuning_job.supervised_tuning_spec.hyper_parameters")
        _check_hyperparameters(spec.get("hyperParameters"))
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or len(labels) > 64 or not all(
                isinstance(k, str) and _LABEL.match(k) and isinstance(v, str)
                and _LABEL_VALUE.match(v) for k, v in labels.items()):
            raise invalid("labels: keys and values must be lower-case letters, digits, '_' "
                          "or '-', at most 63 characters (keys starting with a letter)")
        display = body.get("tunedModelDisplayName", "")
        if not isinstance(display, str) or len(display) > 128:
            raise invalid("tunedModelDisplayName must be at most 128 characters")
        with self._lock:
            examples = self._dataset(spec["trainingDatasetUri"])
            if spec.get("validationDatasetUri"):
                self._dataset(spec["validationDatasetUri"])
            now = self._clock()
            job_id = str(secrets.randbelow(9 * 10**18) + 10**18)
            name = f"projects/{project}/locations/{location}/tuningJobs/{job_id}"
            echoed = {k: v for k, v in body.items() if k in (
                "baseModel", "supervisedTuningSpec", "tunedModelDisplayName", "description",
                "labels")}
            self._jobs[name] = TuningJob(
                name=name, project=project, location=location, body=echoed, created_at=now,
                duration=self._scenario.job_duration_s, failure=self._scenario.fail_jobs,
                examples=examples, endpoint_id=str(secrets.randbelow(9 * 10**18) + 10**18),
                model_id=str(secrets.randbelow(9 * 10**18) + 10**18))
            return self._jobs[name].to_api(now)

    def _dataset(self, uri: str) -> list[tuple[str, str]]:
        """The (user text, model reply) pairs of a dataset in the bucket; the caller holds
        the lock. A line that is not Gemini's format is refused, as Vertex's validation is."""
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        stored = self._objects.get((bucket, name)) if uri.startswith("gs://") else None
        if stored is None:
            raise ApiError(400, "FAILED_PRECONDITION", f"Dataset {uri} does not exist or is "
                           "not readable.")
        pairs: list[tuple[str, str]] = []
        rules = rules_for("vertex", "-")
        for number, line in enumerate(stored.content.decode("utf-8", "replace").splitlines(), 1):
            log = IssueLog(cap=1)
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or check_gemini(record, log, rules) is None:
                why = log.errors[0].message if log.errors else "not a JSON object"
                raise invalid(f"Dataset {uri} line {number} is not valid: {why}")
            pairs.extend(_pairs(record))
        return pairs

    def list_jobs(self, project: str, location: str, filter_: str | None, page_size: int,
                  page_token: str | None) -> dict[str, Any]:
        """One page of the location's jobs, newest first, matching a label filter."""
        if filter_ and self.scenario().refuse_filters:
            raise invalid(f"Unsupported filter: {filter_}")
        wanted = _parse_filter(filter_)
        offset = _offset(page_token, filter_)
        size = DEFAULT_PAGE if page_size <= 0 else min(page_size, MAX_PAGE)
        with self._lock:
            now = self._clock()
            prefix = f"projects/{project}/locations/{location}/"
            jobs = [j for j in sorted(self._jobs.values(), key=lambda j: -j.created_at)
                    if j.name.startswith(prefix) and all(
                        (j.body.get("labels") or {}).get(k) == v for k, v in wanted.items())]
            page = jobs[offset:offset + size]
            out: dict[str, Any] = {"tuningJobs": [j.to_api(now) for j in page]}
            if offset + size < len(jobs):
                out["nextPageToken"] = _token(offset + size, filter_)
            return out

    def get_job(self, name: str) -> dict[str, Any]:
        """One job at now."""
        with self._lock:
            return self._job(name).to_api(self._clock())

    def cancel_job(self, name: str) -> None:
        """Cancel a job that has not ended: CANCELLING for a while, then CANCELLED."""
        with self._lock:
            now = self._clock()
            job = self._job(name)
            state = job.state(now)
            if state not in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
                raise ApiError(400, "FAILED_PRECONDITION", f"Tuning job {name} is in state "
                               f"{state} and cannot be cancelled.")
            job.cancel_at = now

    def _job(self, name: str) -> TuningJob:
        job = self._jobs.get(name)
        if job is None:
            raise not_found(f"The TuningJob does not exist: {name}")
        return job

    def generate(self, project: str, location: str, endpoint_id: str,
                 body: dict[str, Any]) -> dict[str, Any]:
        """The tuned model's answer to the last user turn of ``contents``.

        Raises:
            ApiError: no such endpoint in that project and location (a wrong region too).
        """
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise invalid("contents is required.")
        last = contents[-1] if isinstance(contents[-1], dict) else {}
        prompt = "".join(str(p.get("text", "")) for p in last.get("parts") or []
                         if isinstance(p, dict))
        with self._lock:
            now = self._clock()
            job = next((j for j in self._jobs.values() if j.endpoint_id == endpoint_id
                        and j.project == project and j.location == location
                        and j.state(now) == "JOB_STATE_SUCCEEDED"), None)
            if job is None:
                raise not_found(f"Endpoint projects/{project}/locations/{location}/endpoints/"
                                f"{endpoint_id} not found.")
            self._counts["generate_content"] += 1
            text = job.answer(prompt)
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": max(1, len(prompt) // 4),
                                  "candidatesTokenCount": max(1, len(text) // 4),
                                  "totalTokenCount": max(1, len(prompt) // 4)
                                  + max(1, len(text) // 4)},
                "modelVersion": job.body["baseModel"], "responseId": secrets.token_hex(8)}


def _bucket_resource(name: str) -> dict[str, Any]:
    return {"kind": "storage#bucket", "id": name, "name": name, "storageClass": "STANDARD",
            "location": "US", "metageneration": "1"}


def md5_of(content: bytes) -> str:
    """Base64 MD5, as ``md5Hash``."""
    return base64.b64encode(hashlib.md5(content).digest()).decode()


def crc32c_of(content: bytes) -> str:
    """Base64 of the big-endian CRC32C, as ``crc32c``."""
    return base64.b64encode(google_crc32c.value(content).to_bytes(4, "big")).decode()


def _check_hashes(hashes: dict[str, str], content: bytes) -> None:
    """Refuse content whose md5Hash or crc32c is not the one the client gave, as Cloud
    Storage does (400, nothing stored)."""
    for key, label, actual in (("md5Hash", "MD5 hash", md5_of), ("crc32c", "CRC32C",
                                                                   crc32c_of)):
        given = hashes.get(key)
        if given is not None and given != actual(content):
            raise ApiError(400, "INVALID_ARGUMENT", f'Provided {label} "{given}" doesn\'t '
                           f'match calculated {label} "{actual(content)}".', storage=True)


def _list_position(token: str | None) -> tuple[str, int] | None:
    """The last entry a page of objects.list ended on, from its ``nextPageToken``."""
    if not token:
        return None
    try:
        key, kind = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(key, str) or kind not in (0, 1):
            raise ValueError(token)
    except (ValueError, TypeError):
        raise ApiError(400, "INVALID_ARGUMENT", f"Invalid pageToken: {token!r}",
                       storage=True) from None
    return key, kind


def _check_object_name(name: str) -> None:
    if not name or len(name.encode()) > 1024 or "\n" in name or "\r" in name:
        raise ApiError(400, "INVALID_ARGUMENT", "Object name must be 1-1024 bytes without "
                       "newlines", storage=True)


def _known(message: dict[str, Any], fields: frozenset[str], where: str) -> dict[str, Any]:
    """``message`` with its field names in camelCase (proto3 JSON takes both spellings),
    refusing a name the message does not have, in Google's words."""
    known = {}
    for key, value in message.items():
        name = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), str(key))
        if name not in fields:
            raise invalid(f'Invalid JSON payload received. Unknown name "{key}" at '
                          f"'{where}': Cannot find field.")
        known[name] = value
    return known


def _check_hyperparameters(hyper: Any) -> None:
    if hyper is None:
        return
    if not isinstance(hyper, dict):
        raise invalid("hyperParameters must be an object")
    epochs = hyper.get("epochCount")
    if epochs is not None:  # int64: a JSON string, or a number
        try:
            ok = int(str(epochs)) >= 1 and not isinstance(epochs, bool | float)
        except ValueError:
            ok = False
        if not ok:
            raise invalid(f"hyperParameters.epochCount must be a positive integer, got {epochs!r}")
    rate = hyper.get("learningRateMultiplier")
    if rate is not None and (not isinstance(rate, int | float) or isinstance(rate, bool)
                             or rate <= 0):
        raise invalid(f"hyperParameters.learningRateMultiplier must be above 0, got {rate!r}")
    size = hyper.get("adapterSize")
    if size is not None and size not in ADAPTER_SIZES:
        raise invalid(f"Invalid value for hyperParameters.adapterSize: {size!r}")


def _pairs(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(user text, the model's reply) for each user turn answered by a model turn."""
    contents = record["contents"]

    def text(content: dict[str, Any]) -> str:
        return "".join(str(p.get("text", "")) for p in content.get("parts") or [])

    return [(text(a), text(b)) for a, b in itertools.pairwise(contents)
            if a.get("role") == "user" and b.get("role") == "model"]


def _parse_filter(filter_: str | None) -> dict[str, str]:
    """``labels.k="v" AND labels.k2=v2`` → {k: v, k2: v2}; anything else is refused."""
    wanted: dict[str, str] = {}
    if not filter_ or not filter_.strip():
        return wanted
    for term in re.split(r"\s+AND\s+", filter_.strip()):
        match = _FILTER_TERM.match(term.strip())
        if match is None:
            raise invalid(f"Unsupported filter {filter_!r}: the emulator supports "
                          'labels.KEY="VALUE" terms joined by AND')
        wanted[match.group(1)] = match.group(2) if match.group(2) is not None \
            else match.group(3)
    return wanted


def _token(offset: int, filter_: str | None) -> str:
    raw = json.dumps({"o": offset, "f": hashlib.sha256((filter_ or "").encode()).hexdigest()})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _offset(token: str | None, filter_: str | None) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(data["o"])
        same = data["f"] == hashlib.sha256((filter_ or "").encode()).hexdigest()
    except (ValueError, KeyError, TypeError):
        raise invalid("Invalid page token.") from None
    if not same or offset < 0:
        raise invalid("The page token does not belong to this filter.")
    return offset
