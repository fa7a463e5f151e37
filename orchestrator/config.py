"""Settings: the only place environment variables and secret files are read.

Every setting has the env prefix ``TUNECTL_`` except provider credentials, which use the
variables each provider's own tools read (``OPENAI_API_KEY`` …). A credential, and the
database and broker URLs (they hold passwords), may also be given as a file:
``<NAME>_FILE`` holding the path (Docker and Kubernetes secrets, systemd credentials).
Webhook signing secrets are read the same way, under the names ``TUNECTL_WEBHOOKS`` and job
specs give them; a job spec may name only those its project was given
(``TUNECTL_WEBHOOK_PROJECT_SECRETS``), and nothing tunectl reads a setting or a credential
from ever signs a webhook.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import MissingCredential, UserError
from orchestrator.notify.ssrf import AllowedNetwork
from orchestrator.specs import NotifyTarget

#: A step may run for this share of its job's lease (Celery's task_time_limit is set from it).
STEP_SHARE_OF_LEASE = 0.9
#: Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 27.6 hours in all.
DEFAULT_RETRY_SCHEDULE_S = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: The signing secret of a webhook target that names none.
DEFAULT_WEBHOOK_SECRET = "TUNECTL_WEBHOOK_SECRET"
_SECRET_HELP = ("whsec_ followed by the base64 of 24 to 64 random bytes (several separated "
                "by spaces while a secret is rotated)")
#: The name of a webhook signing secret: an environment variable (or ``<NAME>_FILE``).
SecretName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


def default_data_dir() -> Path:
    """Where the embedded default keeps its SQLite files and datasets."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tunectl"


#: A project's name (jobs.project): what every front door checks a project against.
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
Project = Annotated[str, Field(pattern=PROJECT_PATTERN)]


def check_project(value: object, where: str) -> str:
    """``value`` if it is a project name; else a UserError naming ``where``."""
    if isinstance(value, str) and re.fullmatch(PROJECT_PATTERN, value):
        return value
    raise UserError(f"{where} {str(value)[:80]!r}: must be 1-64 lower-case letters, digits, "
                    "'_', '.' or '-', starting with a letter or digit")


class ApiToken(BaseModel):
    """One API bearer token, as configured: only its SHA-256 is ever stored."""

    model_config = ConfigDict(extra="forbid")

    #: Who holds it (shown in logs, never the token).
    name: str = Field(min_length=1, max_length=64)
    #: The project whose jobs it sees and submits.
    project: Project
    #: Hex SHA-256 of the token (`tunectl api-token` prints both).
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Operator token: also sees and cancels every project's jobs, and reads /metrics.
    admin: bool = False


class Settings(BaseSettings):
    """tunectl's configuration; see docs/configuration.md for the full table."""

    model_config = SettingsConfigDict(env_prefix="TUNECTL_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    broker_url: str = ""

    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "TUNECTL_OPENAI_API_KEY")
    )
    openai_organization: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_ORG_ID", "TUNECTL_OPENAI_ORGANIZATION")
    )
    openai_project: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_PROJECT_ID", "TUNECTL_OPENAI_PROJECT")
    )

    dashscope_base_url: str = "https://dashscope.aliyuncs.com/api/v1"
    dashscope_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DASHSCOPE_API_KEY", "TUNECTL_DASHSCOPE_API_KEY"),
    )
    dashscope_workspace: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DASHSCOPE_WORKSPACE_ID", "TUNECTL_DASHSCOPE_WORKSPACE"),
    )

    #: Vertex AI: project and region of the tuning jobs (a spec's provider_options override
    #: them); without a project, the credentials' own project is used.
    vertex_project: str | None = Field(default=None, validation_alias=AliasChoices(
        "VERTEXAI_PROJECT", "TUNECTL_VERTEX_PROJECT", "GOOGLE_CLOUD_PROJECT"))
    vertex_location: str = Field(default="us-central1", validation_alias=AliasChoices(
        "VERTEXAI_LOCATION", "TUNECTL_VERTEX_LOCATION", "GOOGLE_CLOUD_LOCATION"))
    #: Empty: Google's endpoint for the location (https://LOCATION-aiplatform.googleapis.com).
    vertex_base_url: str = ""
    gcs_base_url: str = "https://storage.googleapis.com"
    #: The Cloud Storage bucket and object prefix datasets are uploaded to for Vertex.
    gcs_bucket: str | None = None
    gcs_prefix: str = "tunectl/"
    #: Datasets larger than this use a resumable upload, sent in chunks of gcs_chunk_bytes.
    gcs_resumable_threshold_bytes: int = 8 << 20
    gcs_chunk_bytes: int = 8 << 20
    #: The projects and buckets a spec's provider_options may name (JSON lists); empty: only
    #: the configured vertex_project and gcs_bucket.
    vertex_projects: list[str] = Field(default_factory=list)
    gcs_buckets: list[str] = Field(default_factory=list)
    #: A service-account key file (or any credentials file google-auth reads); unset: ADC.
    google_application_credentials: Path | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_APPLICATION_CREDENTIALS",
                                                    "TUNECTL_GOOGLE_APPLICATION_CREDENTIALS"))

    #: Hours a deployment lives when its spec sets no ttl_hours (0: until undeployed).
    deploy_ttl_hours: float = 24.0
    #: How long a new deployment may take to serve before it is deleted and its job fails.
    deploy_timeout_s: float = 3600.0

    http_timeout_s: float = 60.0
    upload_timeout_s: float = 600.0
    poll_interval_s: float = 30.0
    scheduler_tick_s: float = 1.0
    scheduler_batch: int = 500
    lease_s: float = 900.0
    max_attempts: int = 20
    retry_base_s: float = 5.0
    retry_cap_s: float = 1800.0
    broker_visibility_timeout_s: int = 7200
    log_format: str = "json"
    log_level: str = "info"

    #: The project of jobs submitted with the local CLI (API jobs take their token's).
    default_project: Project = "default"
    #: Where datasets are stored for every machine: empty for the local blob directory, or
    #: an fsspec URL (s3://bucket/prefix, gs://bucket/prefix); then the local directory is a
    #: cache of it.
    blob_url: str = ""
    #: fsspec options for blob_url as JSON (for example {"endpoint_url": "http://minio:9000"}).
    blob_storage_options: dict[str, Any] = Field(default_factory=dict)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    #: The API's bearer tokens as JSON: [{"name", "project", "sha256", "admin"}, …].
    api_tokens: list[ApiToken] = Field(default_factory=list)
    #: Largest request body the API reads, except dataset uploads.
    api_max_body_bytes: int = Field(default=1 << 20, ge=1024)
    #: Largest dataset upload (and job submission with its datasets) the API reads.
    api_max_upload_bytes: int = Field(default=512 << 20, ge=1024)
    #: The CLI talks to this API instead of the database (`--api` overrides it).
    api_url: str = ""
    #: The CLI's bearer token for api_url.
    api_token: SecretStr | None = None
    #: GET /v1/jobs/{id}/events asks the provider now: its timeout, how long its answer is
    #: kept per job, and how many such calls may run at once (more are a 503).
    api_events_timeout_s: float = Field(default=5.0, gt=0)
    api_events_cache_s: float = Field(default=5.0, ge=0)
    api_events_concurrency: int = Field(default=4, ge=1)
    #: A scheduler or worker serves its own /metrics on this port (0: none).
    metrics_port: int = Field(default=0, ge=0, le=65535)

    #: Endpoints told about every job, besides each spec's ``notify``: a JSON list of
    #: ``{"url", "secret", "events"}``.
    webhooks: list[NotifyTarget] = Field(default_factory=list)
    #: The signing secrets each project's job specs may name, as JSON: ``{"support":
    #: ["SUPPORT_WEBHOOK_SECRET"]}``. A project not listed may name none, and a spec
    #: target without a secret uses TUNECTL_WEBHOOK_SECRET only where it is listed.
    webhook_project_secrets: dict[Project, list[SecretName]] = Field(default_factory=dict)
    #: Seconds before each attempt of a webhook (the first counts from the event), each
    #: jittered by ±20 %; after the last attempt fails the event is dead.
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S))
    webhook_timeout_s: float = 15.0
    #: Networks webhooks may reach although the SSRF guard refuses them, each on every
    #: port or on one (a development receiver on loopback: ``["127.0.0.1:9000"]``).
    webhook_allow_networks: list[Annotated[AllowedNetwork, PlainValidator(
        AllowedNetwork.parse)]] = Field(default_factory=list)
    #: The secret OpenAI signs its webhooks with (``POST /webhooks/openai``).
    openai_webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_WEBHOOK_SECRET", "TUNECTL_OPENAI_WEBHOOK_SECRET"),
    )

    @model_validator(mode="after")
    def _derive_urls(self) -> Settings:
        if not self.database_url:
            self.database_url = (_secret_file("TUNECTL_DATABASE_URL")
                                 or f"sqlite:///{self.data_dir / 'tunectl.db'}")
        if not self.broker_url:
            self.broker_url = (_secret_file("TUNECTL_BROKER_URL")
                               or f"sqla+sqlite:///{self.data_dir / 'broker.db'}")
        if self.lease_s <= 0 or self.poll_interval_s <= 0 or self.scheduler_tick_s <= 0:
            raise ValueError("lease_s, poll_interval_s and scheduler_tick_s must be positive")
        if self.deploy_ttl_hours < 0 or self.deploy_timeout_s <= 0:
            raise ValueError("deploy_ttl_hours must be 0 (no expiry) or more, and "
                             "deploy_timeout_s positive")
        if self.gcs_chunk_bytes <= 0 or self.gcs_chunk_bytes % (256 << 10):
            raise ValueError("gcs_chunk_bytes must be a positive multiple of 262144 (256 KiB), "
                             "as Cloud Storage requires for resumable uploads")
        if self.gcs_resumable_threshold_bytes < 0:
            raise ValueError("gcs_resumable_threshold_bytes must be 0 or more")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if len({t.sha256 for t in self.api_tokens}) != len(self.api_tokens):
            raise ValueError("api_tokens: two tokens have the same sha256; give each its own")
        if self.broker_visibility_timeout_s <= self.lease_s:
            raise ValueError("broker_visibility_timeout_s must be above lease_s, or the broker "
                             "would hand a running step to a second worker")
        schedule = self.webhook_retry_schedule_s
        if not 1 <= len(schedule) <= 50 or not all(
                math.isfinite(d) and 0 <= d <= 30 * 86400 for d in schedule):
            raise ValueError("webhook_retry_schedule_s must list 1 to 50 delays, each from 0 to "
                             "30 days in seconds")
        if self.webhook_timeout_s <= 0:
            raise ValueError("webhook_timeout_s must be positive")
        named = [(f"webhook_project_secrets.{project}", name)
                 for project, names in self.webhook_project_secrets.items() for name in names]
        named += [(f"webhooks.{i}.secret", target.secret or DEFAULT_WEBHOOK_SECRET)
                  for i, target in enumerate(self.webhooks)]
        for where, name in named:
            if _reserved(name):
                raise ValueError(f"{where}: {name} holds a tunectl setting or a provider "
                                 "credential, never a webhook signing secret; give webhooks "
                                 "a secret of their own")
        return self

    @property
    def webhook_lease_s(self) -> float:
        """How long one delivery attempt holds its event, from the moment a worker takes it
        up: its deadline (``webhook_timeout_s``) and the database work around it. (Until
        then the event is leased for ``lease_s``, as a job is: a message may wait that long
        in the broker before the scheduler sends another.)"""
        return self.webhook_timeout_s + 30

    @property
    def upload_deadline_s(self) -> float:
        """How long one upload may take: the upload timeout, but never so long that the step
        doing it would outlive its lease."""
        return min(self.upload_timeout_s, self.lease_s * STEP_SHARE_OF_LEASE * 0.9)

    @property
    def blob_dir(self) -> Path:
        """Content-addressed copies of submitted datasets."""
        return self.data_dir / "blobs"

    def credential(self, name: str) -> str:
        """Return a provider credential by setting name, or raise MissingCredential."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        env = name.upper().removeprefix("TUNECTL_")
        from_file = _secret_file(env)
        if from_file is None:
            raise MissingCredential(f"{env} is not set; export it or set {env}_FILE to a file")
        return from_file

    def webhook_secrets(self, name: str, *, project: str | None = None) -> list[str]:
        """The signing secrets called ``name``: the environment variable, or the file named
        by ``<name>_FILE``. Each one signs every webhook, so that receivers can move from an
        old secret to a new one.

        With ``project`` (a job spec's target), only a name the operator gave that project
        is read, and one it was not given reads exactly as one that is not set: a spec learns
        nothing about the environment. Without (``TUNECTL_WEBHOOKS``), any name but those of
        tunectl's settings and the provider credentials.

        Raises:
            MissingCredential: not set (for the project), unreadable, or not Standard
                Webhooks secrets.
        """
        if project is not None:
            allowed = name in self.webhook_project_secrets.get(project, ())
            raw = _read_secret(name) if allowed and not _reserved(name) else None
            if raw is None:
                raise MissingCredential(
                    f"webhook secret {name} is not set for project {project}; the operator sets "
                    f"it (or {name}_FILE) and lists it for the project in "
                    "TUNECTL_WEBHOOK_PROJECT_SECRETS")
        elif _reserved(name):
            raise MissingCredential(f"webhook secret {name} holds a tunectl setting or a "
                                    "provider credential, never a webhook signing secret")
        else:
            raw = _read_secret(name)
            if raw is None:
                raise MissingCredential(f"webhook secret {name} is not set; export it or set "
                                        f"{name}_FILE to a file holding {_SECRET_HELP}")
        secrets = raw.split()
        if not secrets or not all(_is_whsec(s) for s in secrets):
            raise MissingCredential(f"webhook secret {name} must be {_SECRET_HELP}")
        return secrets


def _read_secret(name: str) -> str | None:
    """The environment variable ``name``, else the file ``<name>_FILE`` names."""
    raw = os.environ.get(name)
    return _secret_file(name) if raw is None else raw


@cache
def _reserved_names() -> frozenset[str]:
    """Every environment variable a setting or credential is read from (``TUNECTL_*`` and
    the providers' own names, ``OPENAI_WEBHOOK_SECRET`` among them), in upper case: the
    settings read them whatever their case."""
    names: set[str] = set()
    for field_name, info in Settings.model_fields.items():
        names.add(f"TUNECTL_{field_name}".upper())
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
    return frozenset(names)


def _reserved(name: str) -> bool:
    """Whether ``name`` holds a setting or a credential (so it never signs a webhook)."""
    return name.upper() in _reserved_names()


def _secret_file(env: str) -> str | None:
    """The contents (stripped) of the file ``<env>_FILE`` names, or None if it names none;
    raises MissingCredential if the file cannot be read."""
    path = os.environ.get(f"{env}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MissingCredential(f"{env}_FILE={path} cannot be read ({exc.strerror}); "
                                "fix the path") from exc


def _is_whsec(secret: str) -> bool:
    if not secret.startswith("whsec_"):
        return False
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return 24 <= len(key) <= 64


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
