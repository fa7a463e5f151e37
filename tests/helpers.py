"""Test helpers: a settable clock, the in-process provider emulators (OpenAI at the root,
DashScope under /dashscope, Google under /google, as `tunectl emulator` serves them), a
Google service-account key file, and a synchronous pump that runs dispatched steps the way
a worker would (same runner, no broker)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from orchestrator import jobs as job_ops
from orchestrator.blobs import BlobStore
from orchestrator.config import Settings
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job, JobTransition
from orchestrator.providers import emulation
from orchestrator.providers.dashscope import emulator as dashscope_emulator
from orchestrator.providers.http import set_shared_client
from orchestrator.providers.openai.emulator import Scenario, create_app
from orchestrator.providers.vertex import emulator as google_emulator
from orchestrator.scheduler import Scheduler
from orchestrator.specs import JobSpec
from orchestrator.steps.runner import run_step

#: Standard Webhooks secrets for tests (whsec_ + base64 of 32 bytes), and the name they go by.
SECRET = "whsec_" + base64.b64encode(b"tunectl-test-webhook-secret-0001").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"tunectl-test-webhook-secret-0002").decode()
SECRET_NAME = "TEST_WEBHOOK_SECRET"
#: The secret names the tests' project may sign its specs' webhooks with.
PROJECT_SECRETS = {"default": [SECRET_NAME, "ROTATING_SECRET", "NOT_SET_ANYWHERE"]}


class Clock:
    """A clock tests move by hand; serves both datetimes (engine) and epoch floats (emulator)."""

    def __init__(self) -> None:
        self.current = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.current

    def epoch(self) -> float:
        return self.current.timestamp()

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


ADMIN_KEY = "sk-test-admin"
GOOGLE_BASE = "http://emulator.test/google"
SERVICE_ACCOUNT = "tunectl-test@tunectl-test.iam.gserviceaccount.com"
KEY_ID = "test-key-1"
#: The Cloud Storage buckets the in-process Google emulator has.
BUCKETS = ("tunectl-test-data", "other-bucket", "acme-data")


@lru_cache(maxsize=1)
def _rsa_key() -> Any:
    """An RSA key generated for this test session."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_key() -> dict[str, str]:
    """What the emulator must know of the test service account (its public key)."""
    from cryptography.hazmat.primitives import serialization

    public = _rsa_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {"client_email": SERVICE_ACCOUNT, "private_key_id": KEY_ID, "public_key_pem": public}


def service_account_file(path: Path, *, token_uri: str = f"{GOOGLE_BASE}/token") -> Path:
    """Write the test service account's key file, its ``token_uri`` at the emulator."""
    import json

    from cryptography.hazmat.primitives import serialization

    private = _rsa_key().private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "tunectl-test", "private_key_id": KEY_ID,
        "private_key": private, "client_email": SERVICE_ACCOUNT, "client_id": "1234567890",
        "token_uri": token_uri, "auth_uri": "https://accounts.google.com/o/oauth2/auth"}))
    return path


@contextmanager
def in_process_emulator(
    clock: Clock, scenario: Scenario | None = None,
    dashscope: dashscope_emulator.Scenario | None = None,
    google: google_emulator.Scenario | None = None,
) -> Iterator[TestClient]:
    """The emulators as the process's provider HTTP client (no sockets): OpenAI at /v1,
    DashScope at /dashscope/api/v1 (admin at /dashscope/_emulator), Google at /google
    (admin at /google/_emulator), which knows the key of ``service_account_file`` and has
    the ``BUCKETS``."""
    app = emulation.combined_app([
        emulation.EmulatorMount("OpenAI", "", "/v1", create_app(scenario, clock=clock.epoch)),
        emulation.EmulatorMount("DashScope", dashscope_emulator.PREFIX, "/api/v1",
                                dashscope_emulator.create_app(dashscope, clock=clock.epoch)),
        emulation.EmulatorMount("Google", google_emulator.PREFIX, "",
                                google_emulator.create_app(google, clock=clock.epoch,
                                                           api_key=ADMIN_KEY, buckets=BUCKETS)),
    ])
    client = TestClient(app, base_url="http://emulator.test",
                        headers={"authorization": f"Bearer {ADMIN_KEY}"})
    client.post("/google/_emulator/service-accounts",
                json=service_account_key()).raise_for_status()
    set_shared_client(client)
    try:
        yield client
    finally:
        set_shared_client(None)
        client.close()


def write_dataset(path: Path, examples: int = 12, *, method: str = "sft") -> Path:
    """A valid dataset of ``examples`` lines."""
    import json

    lines = []
    for i in range(examples):
        if method == "dpo":
            record: dict[str, Any] = {
                "input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
                "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}]}
        else:
            record = {"messages": [{"role": "user", "content": f"question {i}"},
                                   {"role": "assistant", "content": f"answer {i}"}]}
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def make_dashscope_spec(tmp: Path, **overrides: Any) -> JobSpec:
    """A valid DashScope SFT spec for qwen-turbo that deploys, with its dataset in ``tmp``."""
    data: dict[str, Any] = {
        "name": "qwen-job", "provider": "dashscope", "base_model": "qwen-turbo",
        "training_file": write_dataset(tmp / "train.jsonl"),
        "hyperparameters": {"n_epochs": 2}, "deploy": {"capacity": 2, "ttl_hours": 1},
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def make_vertex_spec(tmp: Path, **overrides: Any) -> JobSpec:
    """A valid Vertex SFT spec for gemini-2.5-flash; its dataset in ``tmp`` is in OpenAI's
    chat format (the validate step converts it)."""
    data: dict[str, Any] = {
        "name": "gemini-job", "provider": "vertex", "base_model": "gemini-2.5-flash",
        "training_file": write_dataset(tmp / "train.jsonl"),
        "hyperparameters": {"epoch_count": 2, "adapter_size": 4},
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def make_spec(tmp: Path, **overrides: Any) -> JobSpec:
    """A valid OpenAI SFT spec with its dataset in ``tmp``."""
    data: dict[str, Any] = {
        "name": "test-job", "provider": "openai", "base_model": "gpt-4o-mini-2024-07-18",
        "training_file": write_dataset(tmp / "train.jsonl"),
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


@dataclass
class Pump:
    """Runs the steps the runner and scheduler dispatch, synchronously, like one worker."""

    settings: Settings
    engine: sa.Engine
    clock: Clock
    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def dispatch(self, step: str, job_id: str, lease: str) -> None:
        self.sent.append((step, job_id, lease))

    def submit(self, spec: JobSpec, project: str = "default") -> Job:
        blobs = BlobStore(self.settings.blob_dir)
        return job_ops.submit(self.engine, blobs, spec, source="test", project=project,
                              now=self.clock(), settings=self.settings).job

    def scheduler(self) -> Scheduler:
        return Scheduler(self.settings, self.engine, self.dispatch, now=self.clock)

    def run_sent(self, limit: int = 100) -> list[str]:
        """Run every queued step message (and those they send) in order."""
        outcomes = []
        while self.sent and limit:
            step, job_id, lease = self.sent.pop(0)
            outcomes.append(run_step(step, job_id, lease, settings=self.settings,
                                     engine=self.engine, dispatch=self.dispatch, now=self.clock))
            limit -= 1
        return outcomes

    def until_settled(self, job_id: str, *, step_s: float = 1.0, rounds: int = 200) -> Job:
        """Tick the scheduler and run steps, advancing the clock, until the job is terminal."""
        for _ in range(rounds):
            self.scheduler().tick()
            self.run_sent()
            job = self.job(job_id)
            if job.finished_at is not None:
                return job
            self.clock.advance(step_s)
        raise AssertionError(f"job {job_id} still {self.job(job_id).state}")

    def job(self, job_id: str) -> Job:
        with session_scope(self.engine) as session:
            return job_ops.get(session, job_id)

    def history(self, job_id: str) -> list[JobTransition]:
        with session_scope(self.engine) as session:
            return job_ops.history(session, job_id)


def hooked_job(engine: sa.Engine, url: str, now: datetime, *, secret: str = SECRET_NAME,
               project: str = "default") -> str:
    """A job of ``project`` whose one webhook target gets every transition, inserted as
    submitted: its ``job.queued`` event is written at once. Returns that event's id (its
    delivery id)."""
    from orchestrator.db.transition import insert_job
    from orchestrator.db.types import new_id

    job = Job(id=new_id("job"), project=project, name="hooked", provider="openai", base_model="m",
              method="sft", spec={"notify": [{"url": url, "secret": secret, "events": ["all"]}]},
              spec_sha256="0" * 64, training_blob="0" * 64)
    with session_scope(engine) as session:
        insert_job(session, job, reason="test", now=now)
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT id FROM webhook_deliveries WHERE job_id = :j"),
                                {"j": job.id}).scalar_one())


def claim_deliveries(engine: sa.Engine, now: datetime, lease_s: float = 60) -> tuple[str,
                                                                                     list[str]]:
    """Claim every due webhook delivery, as the scheduler does: (lease, delivery ids)."""
    from orchestrator.db import queries
    from orchestrator.db.types import new_id

    lease = new_id("lease")
    with engine.begin() as conn:
        return lease, queries.claim_due_deliveries(
            conn, owner=lease, now=now, until=now + timedelta(seconds=lease_s), limit=100)


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yield its base URL."""
    import threading
    import time

    import uvicorn

    from orchestrator.loopback import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", ws="none", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
