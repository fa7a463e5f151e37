"""Settings: the only place environment variables and secret files are read.

Every setting has the env prefix ``TUNECTL_`` except provider credentials, which use the
variables each provider's own tools read (``OPENAI_API_KEY`` …). A credential, and the
database and broker URLs (they hold passwords), may also be given as a file:
``<NAME>_FILE`` holding the path (Docker and Kubernetes secrets, systemd credentials).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import MissingCredential, UserError

#: A step may run for this share of its job's lease (Celery's task_time_limit is set from it).
STEP_SHARE_OF_LEASE = 0.9


def default_data_dir() -> Path:
    """Where the embedded default keeps its SQLite files and datasets."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tunectl"


#: A project's name (jobs.project): what every front door checks a project against.
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
Project = Annotated[str, Field(pattern=PROJECT_PATTERN)]


def check_project(value: object, where: str) -> str:
    """``value`` if it is a project name; else a UserError naming ``where``."""
    if isinstance(value, str) and re.match(PROJECT_PATTERN, value):
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
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if len({t.sha256 for t in self.api_tokens}) != len(self.api_tokens):
            raise ValueError("api_tokens: two tokens have the same sha256; give each its own")
        if self.broker_visibility_timeout_s <= self.lease_s:
            raise ValueError("broker_visibility_timeout_s must be above lease_s, or the broker "
                             "would hand a running step to a second worker")
        return self

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
