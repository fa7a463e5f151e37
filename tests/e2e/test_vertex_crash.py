"""A Vertex job with real processes: the worker is SIGKILLed while its create-tuning-job
request is held at the emulator (the job already created there), and the retried submit
finds that job by its label instead of creating a second one.

The emulator, ``tunectl scheduler`` and ``tunectl worker`` run as separate processes on
the selected stack; the worker authenticates with a service-account key file through
google-auth against the emulator's token endpoint, and uploads the (converted) dataset to
the emulated bucket.
"""

from __future__ import annotations

import json
import time

from tests.e2e.checks import assert_full_lifecycle
from tests.e2e.processes import Stack, wait_until

HOLD_S = 4.0
RECOVERY_S = 60.0
CREATE = r"^/v1/projects/[^/]+/locations/[^/]+/tuningJobs$"


def test_worker_killed_mid_submit_leaves_one_tuning_job(stack: Stack) -> None:
    emulator = stack.start_emulator(job_duration=1.0)
    scheduler = stack.start_scheduler()
    worker = stack.start_worker(concurrency=2)
    emulator.set_google_scenario(latency={"seconds": HOLD_S, "routes": CREATE,
                                          "methods": ["POST"]})
    specs = stack.tmp_path / "specs"
    specs.mkdir()
    (specs / "train.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"crash question {i}"},
        {"role": "assistant", "content": f"crash answer {i}"}]}) + "\n" for i in range(12)))
    (specs / "gemini.yaml").write_text(
        "name: gemini-crash\nprovider: vertex\nbase_model: gemini-2.5-flash\n"
        "training_file: train.jsonl\nhyperparameters: {epoch_count: 2}\n")
    job_id = stack.submit(specs / "gemini.yaml")["id"]
    wait_until(lambda: emulator.google_stats()["tuning_jobs"] >= 1, timeout=30,
               what="the tuning job to be created at the emulator")
    assert stack.job(job_id).state == "submitting", "the worker was not in the submit step"

    worker.kill()
    killed = time.monotonic()
    emulator.set_google_scenario()  # no more latency
    stack.start_worker()
    stack.wait_for_state(job_id, {"succeeded"}, timeout=RECOVERY_S)

    shown = stack.show(job_id)
    assert_full_lifecycle(shown["history"], job_id=job_id)
    stats = emulator.google_stats()
    assert stats["tuning_jobs"] == 1, f"{stats['tuning_jobs']} tuning jobs for one job"
    assert stats["jobs_by_state"] == {"JOB_STATE_SUCCEEDED": 1}
    assert stats["objects"] == 1 and stats["tokens_issued"] >= 2  # two workers, two tokens
    found = [row["reason"] for row in shown["history"] if row["from"] == "submitting"]
    assert found == [f"found the provider job an earlier attempt created "
                     f"{shown['provider_job_id']}"]
    assert any(e.get("event") == "scheduler.lease_expired" and e.get("job_id") == job_id
               for e in scheduler.log_events())
    key = json.loads((stack.tmp_path / "google-sa.json").read_text())["private_key"]
    for proc in stack.procs.started:  # no access token or private key reaches a log
        logged = proc.output()
        assert "ya29." not in logged and "PRIVATE KEY" not in logged, proc.name
        assert not any(line in logged for line in key.splitlines()[1:-1]), proc.name
    ref = shown["model_ref"]
    assert ref["model"].startswith("vertex_ai/gemini/") and ref["vertex_location"] == \
        "us-central1"
    print(f"vertex submit: worker killed mid-request, succeeded "
          f"{time.monotonic() - killed:.1f}s later with one tuning job")
