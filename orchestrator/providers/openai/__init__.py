"""OpenAI fine-tuning: ``plugin`` is what the ``tunectl.providers`` entry point loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from orchestrator.config import Settings
from orchestrator.providers.base import ProviderWebhook
from orchestrator.providers.openai import translate, webhooks
from orchestrator.providers.openai.adapter import OpenAIClient
from orchestrator.specs import JobSpec

if TYPE_CHECKING:
    from orchestrator.providers.emulation import EmulatorMount


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

    def verify_webhook(self, settings: Settings, body: bytes,
                       headers: Mapping[str, str]) -> ProviderWebhook:
        """An OpenAI fine-tuning webhook, verified with ``OPENAI_WEBHOOK_SECRET``."""
        return webhooks.verify(settings.credential("openai_webhook_secret"), body, headers)

    def emulator(self, *, job_duration_s: float, api_key: str | None) -> EmulatorMount:
        """The OpenAI emulator, at the root of `tunectl emulator`."""
        from orchestrator.providers.openai.emulator import mount

        return mount(job_duration_s=job_duration_s, api_key=api_key)


plugin = OpenAIPlugin()
