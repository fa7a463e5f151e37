"""Fixtures of the notification tests: process settings from the environment (the outbox
reads the configured endpoints there), the test signing secret under its name, and the
names the tests' project may sign with."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator.config import Settings, get_settings
from tests.helpers import PROJECT_SECRETS, SECRET, SECRET_NAME


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set process settings (``TUNECTL_*``) for this test: values that are not strings
    are given as JSON, as an operator writes them."""
    monkeypatch.setenv(SECRET_NAME, SECRET)
    monkeypatch.setenv("TUNECTL_WEBHOOK_PROJECT_SECRETS", json.dumps(PROJECT_SECRETS))

    def apply(**env: Any) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
        get_settings.cache_clear()

    get_settings.cache_clear()
    yield apply
    get_settings.cache_clear()


@pytest.fixture
def hook_settings(settings: Settings, configure: Callable[..., None]) -> Settings:
    """The test settings, with the process settings configured and the tests' project
    allowed its signing secrets."""
    configure()
    return settings.model_copy(update={"webhook_project_secrets": PROJECT_SECRETS})
