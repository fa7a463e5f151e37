"""The production layout, started from the Procfile's own lines (api, scheduler, worker
twice) on PostgreSQL + Redis: jobs submitted over HTTP (multipart, and JSON naming an
uploaded dataset) and one sent to the queue with ``send_task`` all run to ``succeeded``;
the API's /metrics counts the fleet, and each prefork worker's /metrics sums its pool."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.api.auth import hash_token
from orchestrator.loopback import free_port
from tests.e2e.checks import assert_full_lifecycle, write_job
from tests.e2e.processes import Stack, wait_until
from tests.e2e.test_thousand_jobs import procfile

TOKEN, ADMIN = "tcl_e2e-project-token-0123456789", "tcl_e2e-admin-token-0123456789"


def tokens() -> str:
    return json.dumps([
        {"name": "ci", "project": "e2e", "sha256": hash_token(TOKEN)},
        {"name": "ops", "project": "ops", "sha256": hash_token(ADMIN), "admin": True}])


def job_spec(directory: Path, name: str) -> tuple[dict[str, Any], bytes]:
    spec_path, dataset = write_job(directory, name)
    spec: dict[str, Any] = json.loads(spec_path.read_text())
    return spec, dataset


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_jobs_submitted_over_http_and_the_queue_succeed_through_the_procfile(
        stack: Stack) -> None:
    commands = procfile()
    assert {"api", "scheduler", "worker"} <= set(commands)
    stack.start_emulator(job_duration=1)
    port, metric_ports = free_port(), [free_port(), free_port()]
    stack.overrides.update(TUNECTL_API_TOKENS=tokens(), TUNECTL_API_PORT=str(port))
    api = stack.procs.start("api", commands["api"], stack.env())
    scheduler = stack.procs.start("scheduler", commands["scheduler"], stack.env())
    workers = [stack.procs.start("worker", commands["worker"],
                                 stack.env(TUNECTL_METRICS_PORT=str(p))) for p in metric_ports]
    scheduler.wait_for_output("scheduler.started", timeout=60)
    for proc in workers:
        proc.wait_for_output("ready.", timeout=60)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                        headers={"authorization": f"Bearer {TOKEN}"})

    def ready() -> bool:
        if not api.alive():
            raise AssertionError(f"the API exited:\n{api.tail()}")
        try:
            return http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=60, interval=0.2, what="the API's /readyz")
    specs = stack.tmp_path / "specs"
    ids = []
    for i in range(3):
        spec, dataset = job_spec(specs, f"http-{i}")
        spec.pop("training_file")
        response = http.post("/v1/jobs", data={"spec": json.dumps(spec)},
                             files={"training_file": ("train.jsonl", dataset)})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    spec, dataset = job_spec(specs, "by-reference")
    reference = http.post("/v1/datasets", content=dataset).json()["reference"]
    response = http.post("/v1/jobs", json={**spec, "training_file": reference})
    assert response.status_code == 201, response.text
    ids.append(response.json()["id"])

    from celery import Celery

    producer = Celery("producer", broker=stack.broker_url)
    queued_spec, queued_dataset = job_spec(specs, "queued")
    queued_ref = http.post("/v1/datasets", content=queued_dataset).json()["reference"]
    producer.send_task("tunectl.submit", args=[{**queued_spec, "training_file": queued_ref,
                                                "idempotency_key": "e2e-queued"}, "e2e"],
                       queue="tunectl")
    producer.close()

    def queued_job() -> str | None:
        listed = http.get("/v1/jobs", params={"limit": 10}).json()["jobs"]
        found = [j["id"] for j in listed if j["idempotency_key"] == "e2e-queued"]
        return found[0] if found else None

    ids.append(wait_until(queued_job, timeout=60, interval=0.2, what="the queued submit"))

    def all_succeeded() -> bool:
        states = [http.get(f"/v1/jobs/{i}").json()["state"] for i in ids]
        assert not {"failed", "cancelled"} & set(states), states
        return set(states) == {"succeeded"}

    wait_until(all_succeeded, timeout=180, interval=0.5, what="every job to succeed")
    for job_id in ids:
        assert_full_lifecycle(http.get(f"/v1/jobs/{job_id}/history").json(), job_id=job_id)

    fleet = http.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text
    assert 'tunectl_jobs{project="e2e",provider="openai",state="succeeded"} 5.0' in fleet

    def steps_counted(metrics_port: int) -> float:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        return sum(float(v) for v in re.findall(
            r'^tunectl_step_duration_seconds_count\{[^}]*\} ([0-9.e+]+)$', text, re.M))

    # Steps run in the workers' pool children; each worker's /metrics sums its children.
    counted = sum(steps_counted(p) for p in metric_ports)
    assert counted >= 5 * 5, f"{counted} steps counted by the workers' /metrics"
    http.close()
