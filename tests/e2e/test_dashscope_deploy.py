"""DashScope jobs that deploy, with real processes: ``tunectl emulator`` (DashScope under
/dashscope), ``tunectl scheduler`` and ``tunectl worker``, on the selected stack.

- A qwen-turbo SFT job with auto-deploy goes queued … deploying → succeeded with the
  deployed model on the job; its short TTL then expires, the scheduler deletes the
  deployment at the emulator, and the job's history says so.
- A worker SIGKILLed while its deploy step waits for the provider's answer to "create a
  deployment" (the deployment already exists at the emulator) costs one lease: the retry
  finds that deployment, and the emulator ends with exactly one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e.checks import assert_gapless
from tests.e2e.processes import Stack, wait_until

LIFECYCLE = ["queued", "validating", "uploading", "submitting", "training", "finalizing",
             "deploying", "succeeded"]
#: How long the emulator holds the create-deployment answer (the worker dies meanwhile).
HOLD_S = 4.0
RECOVERY_S = 90.0


def write_qwen_job(directory: Path, name: str, *, ttl_hours: float) -> Path:
    """A qwen-turbo SFT spec that deploys, and its dataset."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"messages": [{"role": "user", "content": f"[{name}] q {i}"},
                                      {"role": "assistant", "content": f"a {i}"}]})
             for i in range(12)]
    (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    spec = directory / f"{name}.json"
    spec.write_text(json.dumps({
        "name": name, "provider": "dashscope", "base_model": "qwen-turbo", "method": "sft",
        "training_file": f"{name}.jsonl", "hyperparameters": {"n_epochs": 1},
        "deploy": {"capacity": 2, "ttl_hours": ttl_hours}}))
    return spec


def distinct(history: list[dict[str, Any]]) -> list[str]:
    visited = [row["to"] for row in history]
    return [s for i, s in enumerate(visited) if i == 0 or s != visited[i - 1]]


def test_a_qwen_turbo_job_deploys_end_to_end_and_its_ttl_deletes_the_deployment(
        stack: Stack) -> None:
    emulator = stack.start_emulator(job_duration=1.0)
    stack.start_scheduler()
    stack.start_worker()
    ttl_hours = 0.003  # 10.8 s
    job_id = stack.submit(write_qwen_job(stack.tmp_path / "specs", "qwen-bot",
                                         ttl_hours=ttl_hours))["id"]

    stack.wait_for_state(job_id, {"succeeded"}, timeout=RECOVERY_S)
    shown = stack.show(job_id)
    listed = json.loads(stack.cli("deployments", "--json"))
    served = emulator.dashscope_stats()

    assert distinct(shown["history"]) == LIFECYCLE
    assert_gapless(shown["history"], job_id=job_id)
    model, deployed = shown["fine_tuned_model"], shown["deployed_model"]
    assert deployed and deployed.startswith(f"{model}-")
    assert shown["result"]["model_ref"] == {"provider": "dashscope", "model": deployed}
    assert [(d["deployed_model"], d["state"], d["capacity"]) for d in listed] == [
        (deployed, "running", 2)]
    assert served["deployments_created"] == {model: 1}
    assert served["deployments_by_status"] == {"RUNNING": 1}

    def undeployed() -> dict[str, Any] | None:
        last = stack.show(job_id)["history"][-1]
        return last if (last["from"], last["to"]) == ("succeeded", "succeeded") else None

    started = time.monotonic()
    last = wait_until(undeployed, timeout=60, interval=0.5, what="the TTL to delete it")
    after = emulator.dashscope_stats()
    shown = stack.show(job_id)

    assert last["reason"] == (f"deployment {deployed} of {model} deleted: its ttl of "
                              f"{ttl_hours:g} h expired")
    assert last["data"]["event"] == "undeployed"
    assert after["deployments_deleted"] == 1
    assert set(after["deployments_by_status"]) <= {"DELETING"}
    assert shown["state"] == "succeeded" and shown["deployed_model"] is None
    assert [d["state"] for d in shown["deployments"]] == ["deleted"]
    assert json.loads(stack.cli("deployments", "--json")) == []
    print(f"deployed {deployed}; its {ttl_hours * 3600:.1f} s TTL deleted it "
          f"{time.monotonic() - started:.1f}s after the job succeeded")


def test_worker_killed_while_creating_the_deployment_leaves_exactly_one(stack: Stack) -> None:
    """SIGKILL of the worker's process group while the create-deployment request is held at
    the emulator (the deployment exists there; the answer never arrives): the scheduler
    re-drives the deploy step after the lease, which finds the deployment instead of
    creating a second, and the job succeeds with it."""
    emulator = stack.start_emulator(job_duration=1.0)
    scheduler = stack.start_scheduler()
    worker = stack.start_worker(concurrency=2)
    emulator.set_dashscope_scenario(latency={
        "seconds": HOLD_S, "routes": r"^/api/v1/deployments$", "methods": ["POST"]})
    job_id = stack.submit(write_qwen_job(stack.tmp_path / "specs", "qwen-crash",
                                         ttl_hours=1))["id"]

    def created() -> bool:
        return bool(emulator.dashscope_stats()["deployments_created"])

    wait_until(created, timeout=RECOVERY_S, interval=0.05,
               what="the deployment to exist at the emulator")
    assert stack.job(job_id).state == "deploying", "the worker was not creating the deployment"
    worker.kill()
    killed = time.monotonic()
    emulator.set_dashscope_scenario()  # no more latency
    stack.start_worker()

    done = stack.wait_for_state(job_id, {"succeeded"}, timeout=RECOVERY_S)
    shown = stack.show(job_id)
    served = emulator.dashscope_stats()
    rescued = sum(1 for e in scheduler.log_events()
                  if e.get("event") == "scheduler.lease_expired" and e.get("job_id") == job_id)

    assert served["deployments_created"] == {done.fine_tuned_model: 1}
    assert served["deployments_by_status"] == {"RUNNING": 1}
    assert [d["deployed_model"] for d in shown["deployments"]] == [done.deployed_model]
    assert distinct(shown["history"]) == LIFECYCLE
    assert_gapless(shown["history"], job_id=job_id)
    assert rescued >= 1, "recovered, but not by a lease rescue?"
    assert shown["deployments"][0]["state"] == "running"
    print(f"worker killed mid-create; succeeded {time.monotonic() - killed:.1f}s later with "
          f"one deployment ({done.deployed_model})")
