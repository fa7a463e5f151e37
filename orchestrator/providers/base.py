"""What a provider plugin must offer the engine, and the normalized values it returns.

Every provider offers ``ProviderPlugin`` / ``ProviderClient``. Optional extras, each off
unless a plugin asks for it, so providers without them need nothing:

- ``deploys = True`` with clients that implement ``Deployer``: tuned models serve only once
  deployed (DashScope); the engine deploys only for such a provider.
- ``options = frozenset({...})``: the ``provider_options`` keys a spec may set (project,
  bucket …); ``connect`` gets them as ``options=`` (by keyword, and only when a job has
  some, so plugins without options keep the two-argument ``connect``). Specs for other
  providers may set none. Such a plugin may also have ``pin_options(settings, options,
  source)``: called when a job is submitted, it checks the options against the operator's
  allow-lists and completes them from settings; the job keeps the result, so that every
  later step of it works in the same place however settings change.
- ``converts_datasets = True``: a dataset in another provider's format is converted to this
  provider's format by the validate step, before anything is uploaded (Vertex).
- clients that implement ``Prompter``: the tuned model can be asked a question (the demo).
- ``RemoteJob.model_ref``: what clients need to call the tuned model, when the generic
  ``{"provider", "model"}`` is not enough (Vertex: the LiteLLM model string, project, …).
- a plugin that is also a ``WebhookSource``: the provider sends signed webhooks about its
  jobs (OpenAI), read at ``POST /webhooks/<provider>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    import httpx

    from orchestrator.config import Settings
    from orchestrator.specs import JobSpec


class RemoteStatus(StrEnum):
    """A provider job's status in the engine's vocabulary."""

    #: Not finished; includes every status the adapter does not recognise.
    RUNNING = "running"
    #: Not finished, but a cancel was accepted (by tunectl or anyone): asking again would
    #: be refused, so the cancel step only waits.
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def live(self) -> bool:
        """Not finished yet (running, or stopping after a cancel)."""
        return self in (RemoteStatus.RUNNING, RemoteStatus.CANCELLING)


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
    #: How clients call the tuned model, if the provider says more than its name.
    model_ref: Mapping[str, Any] | None = None


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
    #: The provider's own training variant, when the spec names one (DashScope: LoRA or full).
    training_type: str | None = None
    #: The job's name, for providers that show one with the tuned model.
    name: str = ""


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
        """A client for the configured account; raises MissingCredential without a key.
        (Plugins with ``options`` also take ``options=``: see ``connect`` below.)"""


class ConfiguredPlugin(ProviderPlugin, Protocol):
    """A plugin whose specs may set ``provider_options`` (the ``options`` extra)."""

    options: frozenset[str]

    def connect(self, settings: Settings, http: httpx.Client, *,
                options: Mapping[str, str] | None = None) -> ProviderClient:
        """A client narrowed by a job's ``provider_options`` (checked at submit)."""


def connect(plugin: ProviderPlugin, settings: Settings, http: httpx.Client,
            options: Mapping[str, str] | None = None) -> ProviderClient:
    """``plugin``'s client for a job with these ``provider_options``: passed by keyword, and
    only when there are some (only plugins with ``options`` take them)."""
    if options:
        return cast(ConfiguredPlugin, plugin).connect(settings, http, options=options)
    return plugin.connect(settings, http)


def pinned_options(plugin: ProviderPlugin, settings: Settings, options: Mapping[str, str],
                   source: str) -> dict[str, str]:
    """The ``provider_options`` a new job is stored with: what the plugin's ``pin_options``
    makes of the spec's (raising SpecError for what the operator does not allow), or the
    spec's own."""
    pin = getattr(plugin, "pin_options", None)
    return dict(pin(settings, options, source)) if callable(pin) else dict(options)


# --- Deployments (optional) -------------------------------------------------------------------


class DeploymentStatus(StrEnum):
    """A provider deployment's status in the engine's vocabulary."""

    #: Being created; includes every status the adapter does not recognise.
    STARTING = "starting"
    #: Serving requests (and billing).
    SERVING = "serving"
    #: The provider gave up creating it.
    FAILED = "failed"
    #: Being deleted, or deleted already: it no longer serves.
    GONE = "gone"


@dataclass(frozen=True)
class RemoteDeployment:
    """A provider's deployment of a tuned model, normalized."""

    #: The provider's id for the deployment: the model name clients call.
    id: str
    #: The tuned model it serves.
    model: str
    status: DeploymentStatus
    #: The provider's own status string, kept for display.
    provider_status: str
    capacity: int
    #: Why the provider failed the deployment, as one line.
    error: str | None = None


@dataclass(frozen=True)
class DeploymentRequest:
    """What the deploy step asks a provider to create."""

    #: tunectl's job id (for logs and names; deployments are found again by ``model``).
    job_id: str
    #: The tuned model to deploy.
    model: str
    capacity: int


@runtime_checkable
class Deployer(Protocol):
    """A provider account that can deploy tuned models. Every method raises only
    ProviderError subclasses."""

    def find_deployment(self, model: str) -> RemoteDeployment | None:
        """The deployment of ``model`` that is not failed or being deleted, if any (how a
        retried deploy finds the one it already created)."""

    def create_deployment(self, request: DeploymentRequest) -> RemoteDeployment:
        """Deploy ``request.model``; it bills from now."""

    def get_deployment(self, deployment_id: str) -> RemoteDeployment | None:
        """The deployment's current state; None once the provider no longer has it."""

    def list_deployments(self) -> list[RemoteDeployment]:
        """Every deployment of the account that is not deleted."""

    def scale_deployment(self, deployment_id: str, capacity: int) -> RemoteDeployment:
        """Change a serving deployment's capacity."""

    def delete_deployment(self, deployment_id: str) -> None:
        """Delete it (it stops billing); a deployment that is gone already is not an error."""


def option_keys(plugin: ProviderPlugin) -> frozenset[str]:
    """The ``provider_options`` keys the provider takes."""
    keys: object = getattr(plugin, "options", frozenset())
    return keys if isinstance(keys, frozenset) else frozenset()


def converts_datasets(plugin: ProviderPlugin) -> bool:
    """Whether a dataset in another provider's format is converted to this provider's."""
    return getattr(plugin, "converts_datasets", False) is True


@runtime_checkable
class Prompter(Protocol):
    """A provider account whose tuned models can be asked a question (optional)."""

    def ask(self, model_ref: Mapping[str, Any], prompt: str) -> str:
        """The tuned model's answer to one user turn; raises ProviderError subclasses."""


def deploys(plugin: ProviderPlugin) -> bool:
    """Whether the provider's tuned models must be deployed before they serve: its plugin
    says ``deploys = True`` and its clients implement ``Deployer``."""
    return getattr(plugin, "deploys", False) is True


def deployer(client: ProviderClient) -> Deployer:
    """The deployment side of a provider client.

    Raises:
        TypeError: the provider has no deployments (the engine checks ``deploys`` first).
    """
    if not isinstance(client, Deployer):
        raise TypeError(f"{type(client).__name__} cannot deploy tuned models")
    return client


# --- Inbound webhooks (optional) --------------------------------------------------------------


@dataclass(frozen=True)
class ProviderWebhook:
    """A webhook a provider sent, verified."""

    #: The provider's id for the delivery (its ``webhook-id``), for logs.
    event_id: str
    #: The provider's event type (``fine_tuning.job.succeeded`` …).
    event_type: str
    #: The provider job it is about; None for an event tunectl does not act on.
    provider_job_id: str | None


@runtime_checkable
class WebhookSource(Protocol):
    """A provider plugin whose provider sends signed webhooks about its jobs."""

    def verify_webhook(self, settings: Settings, body: bytes,
                       headers: Mapping[str, str]) -> ProviderWebhook:
        """Verify one webhook request (``headers`` with lower-case names) and read it.

        Raises:
            WebhookRejected: unsigned, stale or wrongly signed.
            MissingCredential: no signing secret is configured.
        """
