"""Fixtures of the notification tests: process settings from the environment (the outbox
reads the configured endpoints there), and the test signing secret under its name."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator.config import get_settings
from tests.helpers import SECRET, SECRET_NAME


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set process settings (``TUNECTL_*``) for this test: values that are not strings
    are given as JSON, as an operator writes them."""
    monkeypatch.setenv(SECRET_NAME, SECRET)

    def apply(**env: Any) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
        get_settings.cache_clear()

    get_settings.cache_clear()
    yield apply
    get_settings.cache_clear()
