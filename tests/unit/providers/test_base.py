"""What the engine asks of a provider plugin: a plugin written against the two-argument
``connect`` (no provider_options) keeps working; options go by keyword to those that take
them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.providers.base import connect
from orchestrator.steps.outcomes import StepContext


class OldPlugin:
    """A plugin from outside this repository, as the first Protocol described it."""

    name = "old"

    def check_spec(self, spec: Any, source: str) -> None:
        pass

    def connect(self, settings: Settings, http: httpx.Client) -> Any:
        return ("client", settings.data_dir)


class OptionsPlugin(OldPlugin):
    options = frozenset({"region"})

    def connect(self, settings: Settings, http: httpx.Client, *,  # type: ignore[override]
                options: Mapping[str, str] | None = None) -> Any:
        return dict(options or {})


def test_a_plugin_without_options_gets_two_arguments(settings: Settings,
                                                     engine: sa.Engine) -> None:
    ctx = StepContext(settings=settings, engine=engine, plugin=OldPlugin(),
                      now=lambda: datetime.now(UTC), options={})

    with httpx.Client() as http:
        assert connect(OldPlugin(), settings, http, None) == ("client", settings.data_dir)
        assert connect(OldPlugin(), settings, http, {}) == ("client", settings.data_dir)
    assert ctx.provider == ("client", settings.data_dir)


def test_options_go_by_keyword(settings: Settings) -> None:
    with httpx.Client() as http:
        assert connect(OptionsPlugin(), settings, http, {"region": "r1"}) == {"region": "r1"}
