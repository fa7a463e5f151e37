"""Google Vertex AI Gemini supervised tuning, with datasets in Cloud Storage and the tuned
endpoint handed over as a LiteLLM-ready ``model_ref``: ``plugin`` is what the
``tunectl.providers`` entry point loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from orchestrator.blobs import BlobStore
from orchestrator.config import Settings
from orchestrator.errors import MissingCredential, SpecError
from orchestrator.providers.vertex import auth, translate
from orchestrator.providers.vertex.adapter import VertexClient
from orchestrator.specs import JobSpec

if TYPE_CHECKING:
    from orchestrator.providers.emulation import EmulatorMount


class VertexPlugin:
    """Vertex AI as a tunectl provider: tuned models serve from an endpoint Vertex deploys
    itself, and datasets in another provider's format are converted to Gemini's."""

    name = "vertex"
    options = translate.OPTIONS
    converts_datasets = True

    def check_spec(self, spec: JobSpec, source: str) -> None:
        translate.check_spec(spec, source)

    def connect(self, settings: Settings, http: httpx.Client,
                options: Mapping[str, str] | None = None) -> VertexClient:
        """A client for the spec's (else the configured) project, location and bucket.

        Raises:
            MissingCredential: no credentials, project or bucket.
        """
        options = options or {}
        creds = auth.credentials(settings.google_application_credentials,
                                 auth.HttpxRequest(http))
        project = options.get("project") or settings.vertex_project or creds.project
        if not project:
            raise MissingCredential("no Google Cloud project for Vertex: set VERTEXAI_PROJECT "
                                    "or the spec's provider_options.project")
        bucket = options.get("bucket") or settings.gcs_bucket
        if not bucket:
            raise MissingCredential("no Cloud Storage bucket for Vertex datasets: set "
                                    "TUNECTL_GCS_BUCKET or the spec's provider_options.bucket")
        location = options.get("location") or settings.vertex_location
        prefix = options.get("prefix", settings.gcs_prefix)
        try:  # the spec's options were checked at submit; these may come from settings
            translate.check_options({"project": project, "location": location,
                                     "bucket": bucket, "prefix": prefix}, "settings")
        except SpecError as exc:
            raise MissingCredential(
                f"Vertex {exc.field.removeprefix('provider_options.')} {exc.reason}; fix "
                "VERTEXAI_PROJECT, VERTEXAI_LOCATION, TUNECTL_GCS_BUCKET or "
                "TUNECTL_GCS_PREFIX") from None
        storage = {"base_url": settings.gcs_base_url, "bucket": bucket, "prefix": prefix,
                   "resumable_threshold": settings.gcs_resumable_threshold_bytes,
                   "chunk_bytes": settings.gcs_chunk_bytes,
                   "deadline_s": settings.upload_deadline_s}
        return VertexClient(http, creds, project=project, location=location,
                            base_url=settings.vertex_base_url or None, storage=storage,
                            local=BlobStore.from_settings(settings).open_path)

    def emulator(self, *, job_duration_s: float, api_key: str | None) -> EmulatorMount:
        """The Google emulator (OAuth token endpoint, Cloud Storage, Vertex AI), mounted
        under /google by `tunectl emulator`."""
        from orchestrator.providers.vertex.emulator import mount

        return mount(job_duration_s=job_duration_s, api_key=api_key)


plugin = VertexPlugin()
