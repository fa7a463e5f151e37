"""Crash recovery with real processes: a worker SIGKILLed mid-request, and (production
stack) Redis restarted with its data wiped.

Each test runs the emulator, ``tunectl scheduler`` and ``tunectl worker`` as separate
processes on the selected stack, with a 5 s lease so the scheduler re-drives a lost step
within seconds. The invariants checked after every fault:

- the job still reaches ``succeeded``;
- its history (``tunectl show --json``) is gapless, seq 1..n, each row starting where the
  previous one ended, through queued … succeeded;
- the provider (listed with the official OpenAI SDK) holds exactly one training file with
  the job's dataset and exactly one fine-tuning job tagged with the job's id.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import pytest

from orchestrator.loopback import free_port
from tests.e2e.checks import (
    assert_full_lifecycle,
    assert_one_file_per_dataset,
    assert_one_provider_job_each,
    write_job,
)
from tests.e2e.processes import Emulator, Proc, Stack, wait_until

#: How long the emulator holds a response after doing the work (the worker dies meanwhile).
HOLD_S = 4.0
#: Bound on recovery: one lease (5 s) + scheduler tick + the rest of the lifecycle.
RECOVERY_S = 60.0
#: Lease for the pool-child test: longer than Celery's worker_lost_wait (10 s).
CHILD_LEASE_S = 30


@dataclass(frozen=True)
class Crash:
    """Where to kill the worker: while it waits on one step's request."""

    state: str  # the job's state while the step runs
    method: str
    routes: str  # the emulator's latency filter (a regex on the path)
    route: str  # the emulator's counter for that route
    landed: str | None  # the stats counter that shows the request's side effect happened


CRASHES = {
    "upload": Crash("uploading", "POST", r"^/v1/files$", "POST /v1/files", "files"),
    "submit": Crash("submitting", "POST", r"^/v1/fine_tuning/jobs$",
                    "POST /v1/fine_tuning/jobs", "jobs"),
    "poll": Crash("training", "GET", r"^/v1/fine_tuning/jobs/[^/]+$",
                  "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}", None),
}


def lease_rescues(scheduler: Proc, job_id: str) -> int:
    """How many times the scheduler freed this job's expired lease."""
    return sum(1 for e in scheduler.log_events()
               if e.get("event") == "scheduler.lease_expired" and e.get("job_id") == job_id)


@dataclass
class MidRequest:
    """A job whose worker is blocked in one step's request (side effect already done)."""

    emulator: Emulator
    scheduler: Proc
    worker: Proc
    job_id: str
    dataset: bytes


def catch_mid_request(stack: Stack, step: str, *, concurrency: int) -> MidRequest:
    """Start the processes, hold the step's response at the emulator, submit a job, and
    return once the request has arrived and (for upload and submit) its side effect
    happened: the worker is waiting for a response it will never read."""
    crash = CRASHES[step]
    emulator = stack.start_emulator(job_duration=1.0)
    scheduler = stack.start_scheduler()
    worker = stack.start_worker(concurrency=concurrency)
    emulator.set_scenario(latency={"seconds": HOLD_S, "routes": crash.routes,
                                   "methods": [crash.method]})
    spec, dataset = write_job(stack.tmp_path / "specs", f"crash-{step}")
    job_id = stack.submit(spec)["id"]
    wait_until(lambda: emulator.requests(crash.route) >= 1, timeout=30,
               what=f"the {step} request to reach the emulator")
    if crash.landed:
        wait_until(lambda: emulator.stats()[crash.landed] >= 1, timeout=HOLD_S,
                   what=f"the {step} request's side effect")
    assert stack.job(job_id).state == crash.state, "the worker was not in the step under test"
    return MidRequest(emulator, scheduler, worker, job_id, dataset)


def assert_recovered_once(stack: Stack, at: MidRequest) -> int:
    """Succeeded, gapless, one provider file and one provider job; returns transitions."""
    stack.wait_for_state(at.job_id, {"succeeded"}, timeout=RECOVERY_S)
    history = stack.show(at.job_id)["history"]
    assert_full_lifecycle(history, job_id=at.job_id)
    assert_one_file_per_dataset(at.emulator, [at.dataset])
    assert_one_provider_job_each(at.emulator, [at.job_id])
    return len(history)


@pytest.mark.parametrize("step", list(CRASHES))
def test_worker_killed_mid_request_recovers_without_duplicates(stack: Stack, step: str) -> None:
    """SIGKILL of the worker's process group while the step's request is in flight (its
    side effect done, the response not yet read) costs one lease: the scheduler re-drives
    the step on a new worker, and the job succeeds with one provider file and one job."""
    at = catch_mid_request(stack, step, concurrency=2)
    at.worker.kill()
    killed = time.monotonic()
    at.emulator.set_scenario()  # no more latency
    stack.start_worker()
    transitions = assert_recovered_once(stack, at)
    assert lease_rescues(at.scheduler, at.job_id) >= 1, "recovered, but not by a lease rescue?"
    print(f"{step}: worker killed mid-request, succeeded {time.monotonic() - killed:.1f}s "
          f"later, {transitions} transitions")


@pytest.mark.parametrize("step", list(CRASHES))
def test_pool_child_killed_mid_request_recovers_without_duplicates(stack: Stack,
                                                                   step: str) -> None:
    """SIGKILL of only the pool child while the step's request is in flight: Celery
    (acks_late + reject_on_worker_lost) hands the message to a fresh child, which runs the
    step again under the same lease; the retry finds the provider's file or job instead of
    making a second one.

    The lease (and so Celery's hard time limit) is longer than Celery's worker_lost_wait
    (10 s): with a shorter one the time limit fires first, the message is acked as failed,
    and recovery falls back to the lease rescue, which the test above already covers."""
    stack.overrides["TUNECTL_LEASE_S"] = str(CHILD_LEASE_S)
    at = catch_mid_request(stack, step, concurrency=1)
    pool = at.worker.children()
    assert pool, "the prefork worker has no pool children?"
    for pid in pool:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    at.emulator.set_scenario()
    transitions = assert_recovered_once(stack, at)
    assert at.worker.alive(), "the worker's main process died with its pool"
    assert "WorkerLostError" in at.worker.output(), "Celery did not see its pool child die"
    assert lease_rescues(at.scheduler, at.job_id) == 0, "recovered by lease, not redelivery"
    print(f"{step}: pool child killed mid-request, succeeded {time.monotonic() - killed:.1f}s "
          f"later, {transitions} transitions")


def start_redis(stack: Stack, port: int) -> Proc:
    """A private, non-persistent redis-server (a restart starts it empty)."""
    proc = stack.procs.start("redis", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(stack.tmp_path)], stack.env())
    proc.wait_for_output("Ready to accept connections", timeout=30)
    return proc


@pytest.mark.postgres
@pytest.mark.parametrize("kill_worker", [False, True], ids=["worker-survives", "worker-killed"])
def test_redis_restarted_empty_loses_no_job(stack: Stack, kill_worker: bool) -> None:
    """Redis SIGKILLed with steps queued and in flight and restarted with no data: the
    scheduler re-drives every job from the database after its lease expires, and every
    job succeeds with one provider job (and each dataset uploaded once)."""
    import redis

    port = free_port()
    stack.broker_url = f"redis://127.0.0.1:{port}/0"
    broker = start_redis(stack, port)
    emulator = stack.start_emulator(job_duration=1.0)
    # Every provider call takes 0.5 s, so steps pile up in the queue and in the pool.
    emulator.set_scenario(latency={"seconds": 0.5, "routes": r"^/v1/"})
    scheduler = stack.start_scheduler()
    worker = stack.start_worker(concurrency=2)
    jobs: dict[str, bytes] = {}
    for i in range(6):
        # Three datasets for six jobs: uploads are shared, so each must land exactly once.
        spec, dataset = write_job(stack.tmp_path / "specs", f"wipe-{i}", token=f"ds{i % 3}")
        jobs[stack.submit_in_process(spec)] = dataset

    def in_flight() -> int:
        states = [stack.job(j).state for j in jobs]
        with redis.Redis(port=port) as client:
            queued = int(client.llen("tunectl"))
        busy = sum(s in ("uploading", "submitting", "training") for s in states)
        return queued if queued >= 1 and busy >= 2 else 0

    queued = wait_until(in_flight, timeout=30, what="steps queued in redis and in flight")
    broker.kill()
    if kill_worker:
        worker.kill()
    time.sleep(2)  # the scheduler and worker meet a dead broker meanwhile
    restarted = start_redis(stack, port)
    assert "loaded from disk" not in restarted.output(), "redis came back with data"
    emulator.set_scenario()
    if kill_worker:
        stack.start_worker(concurrency=2)

    for job_id in jobs:
        stack.wait_for_state(job_id, {"succeeded"}, timeout=RECOVERY_S)
    for job_id in jobs:
        assert_full_lifecycle(stack.show(job_id)["history"], job_id=job_id)
    assert_one_file_per_dataset(emulator, jobs.values())
    assert_one_provider_job_each(emulator, jobs)
    rescued = sum(lease_rescues(scheduler, job_id) for job_id in jobs)
    assert rescued >= 1, "no lease was rescued: the wipe lost no step message?"
    print(f"redis wiped with {queued} messages queued; all {len(jobs)} jobs succeeded "
          f"after {rescued} lease rescues")
