"""What a step returns, and what it is given.

A step reads a job snapshot, does its I/O, and returns an outcome; the runner applies the
outcome to the database in one guarded transaction. Steps never write job state themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from orchestrator.blobs import BlobStore
from orchestrator.config import Settings
from orchestrator.providers.base import ProviderClient, ProviderPlugin, connect
from orchestrator.providers.http import shared_client
from orchestrator.states import State


@dataclass(frozen=True)
class Advance:
    """Move the job to ``target`` (and, unless terminal, run its next step at once)."""

    target: State
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    #: A provider job to cancel if a user's cancel won the race against this advance.
    cancel_remote: str | None = None


@dataclass(frozen=True)
class Wait:
    """Stay in the current state and run the same step again after ``delay_s``."""

    delay_s: float
    provider_status: str | None = None


Outcome = Advance | Wait


@dataclass
class StepContext:
    """Everything a step may use besides the job itself."""

    settings: Settings
    engine: sa.Engine
    plugin: ProviderPlugin
    now: Callable[[], datetime]
    #: The job spec's ``provider_options``.
    options: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def provider(self) -> ProviderClient:
        """A client for the job's provider account (built on first use)."""
        return connect(self.plugin, self.settings, shared_client(self.settings), self.options)

    @cached_property
    def blobs(self) -> BlobStore:
        """The dataset store."""
        return BlobStore.from_settings(self.settings)
