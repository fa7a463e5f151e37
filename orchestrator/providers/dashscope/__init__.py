"""Alibaba DashScope (Model Studio / Bailian) fine-tunes and deployments: ``plugin`` is what
the ``tunectl.providers`` entry point loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from orchestrator.config import Settings
from orchestrator.providers.dashscope import translate
from orchestrator.providers.dashscope.adapter import DashScopeClient
from orchestrator.specs import JobSpec

if TYPE_CHECKING:
    from orchestrator.providers.emulation import EmulatorMount


class DashScopePlugin:
    """DashScope as a tunectl provider: tuned models serve only once deployed."""

    name = "dashscope"
    deploys = True

    def check_spec(self, spec: JobSpec, source: str) -> None:
        translate.check_spec(spec, source)

    def connect(self, settings: Settings, http: httpx.Client) -> DashScopeClient:
        return DashScopeClient(
            http,
            base_url=settings.dashscope_base_url,
            api_key=settings.credential("dashscope_api_key"),
            workspace=settings.dashscope_workspace,
            upload_timeout_s=settings.upload_deadline_s,
        )

    def emulator(self, *, job_duration_s: float, api_key: str | None) -> EmulatorMount:
        """The DashScope emulator, mounted under /dashscope by `tunectl emulator`."""
        from orchestrator.providers.dashscope.emulator import mount

        return mount(job_duration_s=job_duration_s, api_key=api_key)


plugin = DashScopePlugin()
