"""A step that starts late in its lease must not outlive it and create a second provider
object (a regression test: it once did).

How it plays out, with real processes: the step's first attempt is throttled (429), so the
job goes back to the scheduler for a retry; the worker is paused (SIGSTOP, as a stalled VM
or a long queue would) when the scheduler re-claims the job and sends the retry, and
resumed ``LATE_S`` seconds into that lease. The retry's lookup (``find_file`` /
``find_job``) is slow (``LOOKUP_S``), longer than what was left of the lease. Before the
fix the lease expired mid-lookup, the scheduler sent the step again, both runs missed the
lookup and both created. Now a step renews its lease when it starts (and is killed at 90 %
of it), its advance requires the lease, and a run that loses the race cancels the provider
job it created.
"""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest

from orchestrator.db.types import utcnow
from tests.e2e.checks import (
    assert_full_lifecycle,
    assert_one_file_per_dataset,
    assert_one_provider_job_each,
    write_job,
)
from tests.e2e.processes import Stack, wait_until

LEASE_S = 6
#: The worker resumes this long after the retry's lease was granted.
LATE_S = 4.0
#: The lookup before the create takes this long (held by the emulator).
LOOKUP_S = 4.0
#: The first create is throttled with this retry-after, leaving time to pause the worker.
RETRY_AFTER_S = 2.0

CASES = {
    # step: (state, route of the create (throttled once), route regex of the lookup)
    "upload": ("uploading", r"^/v1/files$", r"^/v1/files$"),
    "submit": ("submitting", r"^/v1/fine_tuning/jobs$", r"^/v1/fine_tuning/jobs$"),
}


@pytest.mark.parametrize("step", list(CASES))
def test_step_outliving_its_lease_creates_nothing_twice(stack: Stack, step: str) -> None:
    """A retry resumed late in its lease, with a slow lookup, still leaves one provider
    file and one provider job."""
    state, create_route, lookup_route = CASES[step]
    stack.overrides["TUNECTL_LEASE_S"] = str(LEASE_S)
    emulator = stack.start_emulator(job_duration=1.0)
    scheduler = stack.start_scheduler()
    worker = stack.start_worker(concurrency=2)
    emulator.set_scenario(
        throttle={"count": 1, "retry_after_s": RETRY_AFTER_S, "routes": create_route,
                  "methods": ["POST"]},
        latency={"seconds": LOOKUP_S, "routes": lookup_route, "methods": ["GET"]})
    spec, dataset = write_job(stack.tmp_path / "specs", f"overrun-{step}")
    job_id = stack.submit(spec)["id"]

    # The first attempt was throttled and gave its lease back: pause the worker before the
    # scheduler sends the retry.
    wait_until(lambda: emulator.stats()["throttled"] >= 1, timeout=60, interval=0.02,
               what="the throttled create")
    wait_until(lambda: stack.job(job_id).lease_owner is None, timeout=10, interval=0.02,
               what="the lease to be given back for the retry")
    worker.signal_group(signal.SIGSTOP)
    paused = stack.job(job_id)
    if paused.state != state or paused.lease_owner is not None:
        pytest.skip("the retry was re-claimed before the worker could be paused")

    retry = wait_until(lambda: (j := stack.job(job_id)).lease_owner and j, timeout=30,
                       what="the scheduler to re-claim the job for the retry")
    assert retry.lease_expires_at is not None
    granted = retry.lease_expires_at - timedelta(seconds=LEASE_S)
    time.sleep(max(0.0, (granted + timedelta(seconds=LATE_S) - utcnow()).total_seconds()))
    if (utcnow() - granted).total_seconds() > LATE_S + 1.0:
        pytest.skip("this machine resumed the worker too late for the scenario")
    worker.signal_group(signal.SIGCONT)

    stack.wait_for_state(job_id, {"succeeded"}, timeout=60)
    time.sleep(LOOKUP_S + 2)  # let any overlapping run finish its create
    rescued = [e for e in scheduler.log_events()
               if e.get("event") == "scheduler.lease_expired" and e.get("job_id") == job_id]

    # The retry renewed its lease when it started, so it finished inside it: the scheduler
    # never handed the job to a second worker, and the provider holds one of each.
    assert rescued == []
    assert_full_lifecycle(stack.show(job_id)["history"], job_id=job_id)
    assert_one_file_per_dataset(emulator, [dataset])
    assert_one_provider_job_each(emulator, [job_id])
