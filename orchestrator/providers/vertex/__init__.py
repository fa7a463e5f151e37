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

    def pin_options(self, settings: Settings, options: Mapping[str, str],
                    source: str) -> dict[str, str]:
        """The spec's project, location, bucket and prefix, completed from settings, that
        the job then keeps (so a retried step looks where the first one worked).

        Raises:
            SpecError: a project or bucket the operator does not allow (the allow-lists
                ``TUNECTL_VERTEX_PROJECTS`` and ``TUNECTL_GCS_BUCKETS`` default to the
                configured project and bucket).
            MissingCredential: a configured value Vertex would not take.
        """
        for key, allowed, default, setting in (
                ("project", settings.vertex_projects, settings.vertex_project,
                 "TUNECTL_VERTEX_PROJECTS"),
                ("bucket", settings.gcs_buckets, settings.gcs_bucket, "TUNECTL_GCS_BUCKETS")):
            if key in options and options[key] not in (allowed or [default or ""]):
                raise SpecError(source, f"provider_options.{key}", f"{options[key]!r} is not a "
                                f"{key} this tunectl may use; the operator allows more in "
                                f"{setting} (a JSON list)")
        configured = {"project": settings.vertex_project, "location": settings.vertex_location,
                      "bucket": settings.gcs_bucket, "prefix": settings.gcs_prefix}
        pinned = {k: v for k, v in configured.items() if v and k not in options}
        _check_settings(pinned)
        return {**pinned, **options}

    def connect(self, settings: Settings, http: httpx.Client, *,
                options: Mapping[str, str] | None = None) -> VertexClient:
        """A client for the job's (else the configured) project, location and bucket.

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
        _check_settings({"project": project, "location": location, "bucket": bucket,
                         "prefix": prefix})
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


def _check_settings(options: Mapping[str, str]) -> None:
    """Check values that may come from settings like a spec's (a spec's were checked at
    submit already); one Vertex would not take names the variables to fix."""
    try:
        translate.check_options(options, "settings")
    except SpecError as exc:
        raise MissingCredential(
            f"Vertex {exc.field.removeprefix('provider_options.')} {exc.reason}; fix "
            "VERTEXAI_PROJECT, VERTEXAI_LOCATION, TUNECTL_GCS_BUCKET or "
            "TUNECTL_GCS_PREFIX") from None


plugin = VertexPlugin()
