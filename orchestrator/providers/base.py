"""What a provider plugin must offer the engine, and the normalized values it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

    from orchestrator.config import Settings
    from orchestrator.specs import JobSpec


class RemoteStatus(StrEnum):
    """A provider job's status in the engine's vocabulary."""

    #: Not finished; includes every status the adapter does not recognise.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RemoteFile:
    """A file stored at the provider."""

    id: str
    bytes: int


@dataclass(frozen=True)
class RemoteJob:
    """A provider's fine-tune job, normalized."""

    id: str
    status: RemoteStatus
    #: The provider's own status string, kept for display.
    provider_status: str
    fine_tuned_model: str | None = None
    #: Why the provider failed the job, as one line.
    error: str | None = None
    #: Provider facts worth keeping on success (trained tokens, result files …).
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteEvent:
    """One line of a provider job's event log."""

    at: datetime
    level: str
    message: str


@dataclass(frozen=True)
class JobRequest:
    """What the submit step asks a provider to create."""

    #: tunectl's job id: stored with the provider job so that a retried submit finds it.
    job_id: str
    base_model: str
    method: str
    training_file_id: str
    validation_file_id: str | None
    hyperparameters: Mapping[str, Any]
    suffix: str | None
    labels: Mapping[str, str]
    seed: int | None = None


def dataset_filename(sha256: str) -> str:
    """The name a dataset gets at the provider: the content hash makes uploads findable."""
    return f"tunectl-{sha256}.jsonl"


class ProviderClient(Protocol):
    """A provider account, ready to call. Every method raises only ProviderError subclasses."""

    #: Stable fingerprint of the account (never the key itself); uploads dedupe per account.
    account: str

    def find_file(self, sha256: str) -> RemoteFile | None:
        """The file uploaded earlier with this content hash, if the provider still has it."""

    def file_exists(self, file_id: str) -> bool:
        """Whether the provider still has this file (users delete files)."""

    def upload_file(self, path: Path, sha256: str) -> RemoteFile:
        """Upload a dataset under ``dataset_filename(sha256)``."""

    def find_job(self, job_id: str) -> RemoteJob | None:
        """The provider job created earlier for tunectl job ``job_id``, if any."""

    def create_job(self, request: JobRequest) -> RemoteJob:
        """Create the provider job, tagged with ``request.job_id``."""

    def get_job(self, provider_job_id: str) -> RemoteJob:
        """The provider job's current state."""

    def cancel_job(self, provider_job_id: str) -> RemoteJob:
        """Ask the provider to cancel; returns the job as the provider then reports it."""

    def list_events(self, provider_job_id: str, limit: int = 20) -> list[RemoteEvent]:
        """The newest events of the provider job, oldest first."""


class ProviderPlugin(Protocol):
    """A provider as the engine finds it through the ``tunectl.providers`` entry point."""

    name: str

    def check_spec(self, spec: JobSpec, source: str) -> None:
        """Raise SpecError for what this provider cannot run (method, hyperparameters …)."""

    def connect(self, settings: Settings, http: httpx.Client) -> ProviderClient:
        """A client for the configured account; raises MissingCredential without a key."""
