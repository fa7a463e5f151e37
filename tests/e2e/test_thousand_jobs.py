"""1,000 jobs at once through the production process layout (PostgreSQL + Redis).

The processes are started from the Procfile's own lines: its ``scheduler`` line twice and
its ``worker`` line twice, with production default timings, against the test database,
a Redis DB of the e2e tests' own, and an emulator whose jobs finish at once. The jobs are
submitted in-process (``orchestrator.jobs.submit``, all sharing one small dataset) before
the processes start, so all 1,000 are due together.
Checked: every job succeeds within a bounded time, every history is gapless, no
``(job, seq)`` pair is written twice, the dataset is uploaded once, and the provider holds
exactly one job per tunectl job.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.e2e.checks import assert_one_file_per_dataset, provider_jobs_by_tunectl_id, write_job
from tests.e2e.processes import Stack, wait_until

JOBS = 1000
#: All 1,000 must have succeeded this long after the processes are started.
BOUND_S = 240.0
PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


def procfile() -> dict[str, list[str]]:
    """The Procfile's process lines: name → argv."""
    lines: dict[str, list[str]] = {}
    for raw in PROCFILE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            lines[name.strip()] = shlex.split(command)
    return lines


def states(engine: sa.Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.exec_driver_sql(
            "SELECT state, count(*) FROM jobs GROUP BY state").all()))


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_thousand_jobs_through_procfile_processes(stack: Stack) -> None:
    """1,000 jobs submitted at once all succeed, exactly once each at the provider."""
    commands = procfile()
    assert {"scheduler", "worker"} <= set(commands), f"Procfile lines: {sorted(commands)}"
    stack.overrides = {}  # the production defaults, as the Procfile would run them
    emulator = stack.start_emulator(job_duration=0)
    spec, dataset = write_job(stack.tmp_path / "specs", "thousand")
    submit_started = time.monotonic()
    ids = [stack.submit_in_process(spec) for _ in range(JOBS)]
    submitted = time.monotonic() - submit_started

    # All 1,000 are due at once when the processes come up: the two schedulers' first
    # claims split them (SKIP LOCKED), and the two workers drain the burst.
    started = time.monotonic()
    for name in ("scheduler", "scheduler", "worker", "worker"):
        stack.procs.start(name, commands[name], stack.env())
    for proc in stack.procs.started:
        if proc.name in ("scheduler", "worker"):
            proc.wait_for_output("scheduler.started" if proc.name == "scheduler" else "ready.",
                                 timeout=60)

    def all_done() -> bool:
        seen = states(stack.engine)
        bad = {s: n for s, n in seen.items() if s in ("failed", "cancelled")}
        assert not bad, f"jobs ended badly: {dict(seen)}"
        return seen["succeeded"] == JOBS

    try:
        wait_until(all_done, timeout=BOUND_S, interval=1,
                   what=f"all {JOBS} jobs to succeed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; states: {dict(states(stack.engine))}") from None
    took = time.monotonic() - started

    with stack.engine.connect() as conn:
        duplicated = conn.exec_driver_sql(
            "SELECT job_id, seq, count(*) FROM job_transitions GROUP BY job_id, seq "
            "HAVING count(*) > 1").all()
        gaps = conn.exec_driver_sql(
            "SELECT j.id, j.version, count(t.id), min(t.seq), max(t.seq) FROM jobs j "
            "LEFT JOIN job_transitions t ON t.job_id = j.id GROUP BY j.id, j.version "
            "HAVING count(t.id) <> max(t.seq) OR min(t.seq) <> 1 OR max(t.seq) <> j.version"
        ).all()
        broken_chain = conn.exec_driver_sql(
            "SELECT job_id, seq, from_state, prev FROM ("
            "  SELECT job_id, seq, from_state, to_state,"
            "         lag(to_state) OVER (PARTITION BY job_id ORDER BY seq) AS prev"
            "  FROM job_transitions) t "
            "WHERE (seq = 1 AND (from_state IS NOT NULL OR to_state <> 'queued'))"
            "   OR (seq > 1 AND from_state IS DISTINCT FROM prev)").all()
        transitions = conn.exec_driver_sql("SELECT count(*) FROM job_transitions").scalar_one()
    assert not duplicated, f"(job, seq) written twice: {duplicated[:5]}"
    assert not gaps, f"histories with gaps (id, version, rows, min, max): {gaps[:5]}"
    assert not broken_chain, f"rows not starting where the last ended: {broken_chain[:5]}"
    assert_one_file_per_dataset(emulator, [dataset])
    at_provider = provider_jobs_by_tunectl_id(emulator)
    assert sum(at_provider.values()) == JOBS, f"{sum(at_provider.values())} provider jobs"
    assert set(at_provider) == set(ids) and set(at_provider.values()) == {1}
    print(f"{JOBS} jobs: submitted in {submitted:.1f}s; all succeeded {took:.1f}s after the "
          f"Procfile processes were started ({JOBS / took:.1f} lifecycles/s, "
          f"{transitions} transitions)")
