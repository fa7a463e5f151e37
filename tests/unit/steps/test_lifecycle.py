"""The whole lifecycle through the real runner, scheduler and emulator, one step at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.providers.openai.emulator import Scenario
from tests.helpers import Clock, Pump, in_process_emulator, make_spec


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pump(settings: Settings, engine: sa.Engine, clock: Clock) -> Pump:
    return Pump(settings, engine, clock)


def states(pump: Pump, job_id: str) -> list[str]:
    return [t.to_state for t in pump.history(job_id)]


class TestHappyPath:
    def test_sft_job_reaches_succeeded_through_every_state(self, pump: Pump, clock: Clock,
                                                          tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=10)) as emulator:
            job = pump.submit(make_spec(tmp_path, suffix="bot"))
            done = pump.until_settled(job.id)

            assert done.state == "succeeded"
            assert done.fine_tuned_model and done.fine_tuned_model.startswith("ft:gpt-4o-mini")
            assert states(pump, job.id)[:5] == ["queued", "validating", "uploading",
                                                "submitting", "training"]
            assert states(pump, job.id)[-2:] == ["finalizing", "succeeded"]
            assert [t.seq for t in pump.history(job.id)] == list(
                range(1, len(pump.history(job.id)) + 1))
            stats = emulator.get("/_emulator/stats").json()
            print(stats)
