"""OpenAI fine-tuning: ``plugin`` is what the ``tunectl.providers`` entry point loads."""

from __future__ import annotations

import httpx

from orchestrator.config import Settings
from orchestrator.providers.openai import translate
from orchestrator.providers.openai.adapter import OpenAIClient
from orchestrator.specs import JobSpec


class OpenAIPlugin:
    """OpenAI as a tunectl provider."""

    name = "openai"

    def check_spec(self, spec: JobSpec, source: str) -> None:
        translate.check_spec(spec, source)

    def connect(self, settings: Settings, http: httpx.Client) -> OpenAIClient:
        return OpenAIClient(
            http,
            base_url=settings.openai_base_url,
            api_key=settings.credential("openai_api_key"),
            organization=settings.openai_organization,
            project=settings.openai_project,
            upload_timeout_s=settings.upload_deadline_s,
        )


plugin = OpenAIPlugin()
