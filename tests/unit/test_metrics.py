"""Process-local metrics: steps run through the real runner count their duration, every
failed provider call is counted once (by operation and class); the scheduler counts how
late it picked jobs up."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from prometheus_client import REGISTRY

from orchestrator.config import Settings
from orchestrator.providers.emulation import Throttle
from orchestrator.providers.openai.emulator import Scenario
from tests.helpers import Clock, Pump, in_process_emulator, make_spec


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_steps_and_the_scheduler_count_into_the_process_registry(
        settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    step = {"step": "upload", "provider": "openai"}
    throttled_upload = {"provider": "openai", "operation": "upload file",
                        "error": "RateLimited"}
    before = (sample("tunectl_step_duration_seconds_count", **step, outcome="submitting"),
              sample("tunectl_provider_errors_total", **throttled_upload),
              sample("tunectl_step_duration_seconds_count", **step, outcome="retry"),
              sample("tunectl_scheduler_pickup_lag_seconds_count"))
    clock = Clock()
    pump = Pump(settings, engine, clock)
    throttled = Scenario(job_duration_s=1, throttle=Throttle(
        count=1, routes="^/v1/files$", methods=["POST"], retry_after_s=1))
    with in_process_emulator(clock, throttled):
        assert pump.until_settled(pump.submit(make_spec(tmp_path)).id).state == "succeeded"

    after = (sample("tunectl_step_duration_seconds_count", **step, outcome="submitting"),
             sample("tunectl_provider_errors_total", **throttled_upload),
             sample("tunectl_step_duration_seconds_count", **step, outcome="retry"),
             sample("tunectl_scheduler_pickup_lag_seconds_count"))
    assert [a - b for a, b in zip(after, before, strict=True)][:3] == [1, 1, 1]
    assert after[3] > before[3]


def test_the_worker_sets_up_shared_metrics_before_anything_imports_prometheus_client() -> None:
    """A prefork worker's PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is
    imported; `tunectl worker` refuses to start otherwise. What it imports by then must not
    import it (a module-level `from orchestrator import metrics` in a step module would)."""
    import subprocess
    import sys

    code = ("import sys, orchestrator.cli, workers.app, orchestrator.db.engine; "
            "print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
