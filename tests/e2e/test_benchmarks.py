"""Every benchmark under bench/ starts and prints its figures, run with its smallest
arguments (so a change elsewhere cannot leave one broken until someone next measures).
The ones that start the whole daemon run in the production pass only, on its stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.processes import E2E_REDIS_URL

BENCH = Path(__file__).parents[2] / "bench"
PRODUCTION = pytest.mark.postgres

#: (script, smallest arguments, a line its report prints)
RUNS = [
    pytest.param("validate_dataset.py", ["--size-mb", "1"], "token counting off:",
                 id="validate_dataset"),
    pytest.param("vertex_upload.py", ["--size-mb", "1", "--chunk-mb", "1"],
                 "resumable upload of 1 MB", id="vertex_upload"),
    pytest.param("claim.py", ["--rows", "200", "--runs", "2"], "median", id="claim",
                 marks=PRODUCTION),
    pytest.param("throughput.py", ["--stack", "production", "--redis-url", E2E_REDIS_URL,
                                   "--noop-tasks", "5", "--jobs", "2", "--concurrency", "2"],
                 "full lifecycles/s", id="throughput", marks=PRODUCTION),
    pytest.param("webhook_latency.py", ["--stack", "production", "--redis-url", E2E_REDIS_URL,
                                        "--jobs", "2", "--spread", "0", "--duration", "0.5",
                                        "--poll-interval", "1"],
                 "polling only", id="webhook_latency", marks=PRODUCTION),
]


@pytest.mark.parametrize(("script", "args", "expected"), RUNS)
def test_the_benchmark_runs_and_reports(script: str, args: list[str], expected: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert expected in done.stdout
