"""Real processes for the end-to-end tests: ``tunectl`` emulator, worker, scheduler and api.

Every process a test starts goes through ``Procs``: it runs in its own session (so a
SIGKILL of its process group takes the Celery main process and its pool children
together) and writes its output to a file under the test's tmp_path. ``Stack`` builds the
environment those processes share (database, broker, data dir, emulator, a Google service
account the emulator knows, timings) and
reads the results back (``tunectl show --json``, the job rows).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from openai import OpenAI

from orchestrator import jobs as job_ops
from orchestrator.blobs import BlobStore
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job
from orchestrator.loopback import free_port
from orchestrator.providers.vertex.emulator import DEMO_BUCKET
from orchestrator.specs import load_spec
from tests.conftest import API_KEY, REDIS_URL
from tests.helpers import service_account_file, service_account_key

VENV_BIN = Path(sys.executable).parent
E2E_REDIS_URL = os.environ.get(
    "TUNECTL_TEST_E2E_REDIS_URL", REDIS_URL.rsplit("/", 1)[0] + "/11")
LOG_TAIL_LINES = 60

#: Timings for the crash tests: short leases so the scheduler re-drives within seconds.
FAST = {
    "TUNECTL_LEASE_S": "5",
    "TUNECTL_SCHEDULER_TICK_S": "0.2",
    "TUNECTL_POLL_INTERVAL_S": "0.3",
    "TUNECTL_RETRY_BASE_S": "0.5",
    "TUNECTL_RETRY_CAP_S": "5",
    "TUNECTL_MAX_ATTEMPTS": "20",
}


def tunectl_argv(*args: str) -> list[str]:
    """The command line of the installed ``tunectl`` (falling back to ``python -m``)."""
    script = VENV_BIN / "tunectl"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "orchestrator.cli", *args]


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """One process this test started, in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        with log.open("ab") as sink:
            self.popen = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (main process and pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def children(self) -> list[int]:
        """PIDs of the main process's direct children (a prefork worker's pool)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                found.append(int(stat.parent.name))
        return found

    def kill(self) -> None:
        """SIGKILL the process group and reap the main process."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=15)
        self.signal_group(signal.SIGKILL)  # pool children that outlived their parent

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the main process (a graceful stop), SIGKILL the group if it lingers."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self.kill()

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines it wrote."""
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_output(self, needle: str, *, timeout: float = 30) -> None:
        """Wait until ``needle`` appears in the log; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before "
                                     f"logging {needle!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {needle!r} within "
                                     f"{timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.05)

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines it wrote (non-JSON lines skipped)."""
        events = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events


class Procs:
    """Starts and tracks the processes of one test; kills every one of them at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        """Start ``argv`` as ``name`` (its log is ``<name>-<n>.log``)."""
        n = sum(1 for p in self.started if p.name == name) + 1
        proc = Proc(name, argv, env, self.log_dir / f"{name}-{n}.log")
        self.started.append(proc)
        return proc

    def close(self) -> None:
        """SIGKILL every process group started (the tests never need a graceful end)."""
        for proc in reversed(self.started):
            proc.kill()

    def report(self) -> str:
        """The tail of every process log, for a failed test's report."""
        parts = []
        for proc in self.started:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"===== {proc.name} (pid {proc.pid}, {state}) {proc.log} =====\n"
                         f"$ {shlex.join(proc.argv)}\n{proc.tail()}")
        return "\n".join(parts)


class Emulator:
    """A ``tunectl emulator`` process and its admin routes."""

    def __init__(self, proc: Proc, port: int, job_duration: float) -> None:
        self.proc, self.port, self.job_duration = proc, port, job_duration
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/v1"
        self.http = httpx.Client(base_url=self.root, timeout=10)

    def wait_ready(self, timeout: float = 30) -> None:
        def up() -> bool:
            if not self.proc.alive():
                raise AssertionError(f"emulator exited:\n{self.proc.tail()}")
            try:
                return self.http.get("/_emulator/stats").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=timeout, interval=0.1, what="the emulator")

    def stats(self) -> dict[str, Any]:
        """Files, jobs and requests per route ("METHOD /path/{template}")."""
        response = self.http.get("/_emulator/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def requests(self, route: str) -> int:
        """How many requests reached ``route`` so far."""
        return int(self.stats()["requests"].get(route, 0))

    def set_scenario(self, **scenario: Any) -> None:
        """Replace the scenario (keeping this emulator's job duration unless given)."""
        body = {"job_duration_s": self.job_duration, **scenario}
        self.http.put("/_emulator/scenario", json=body).raise_for_status()

    def dashscope_stats(self) -> dict[str, Any]:
        """The DashScope emulator's counters (deployments created per model, deleted …)."""
        response = self.http.get("/dashscope/_emulator/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def set_dashscope_scenario(self, **scenario: Any) -> None:
        """Replace the DashScope scenario (keeping this emulator's durations unless given)."""
        body = {"job_duration_s": self.job_duration,
                "deployment_duration_s": self.job_duration, **scenario}
        self.http.put("/dashscope/_emulator/scenario", json=body).raise_for_status()

    def google_stats(self) -> dict[str, Any]:
        """The Google emulator's counters (tokens, objects, tuning jobs by state …)."""
        response = self.http.get("/google/_emulator/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def set_google_scenario(self, **scenario: Any) -> None:
        """Replace the Google scenario (keeping this emulator's job duration unless given)."""
        body = {"job_duration_s": self.job_duration, **scenario}
        self.http.put("/google/_emulator/scenario", json=body).raise_for_status()

    def sdk(self) -> OpenAI:
        """The official OpenAI SDK pointed at the emulator (close it after use)."""
        return OpenAI(base_url=self.url, api_key=API_KEY, max_retries=0)

    def close(self) -> None:
        self.http.close()


class Stack:
    """One test's tunectl deployment: env, processes, and views of the DB and emulator."""

    def __init__(self, tmp_path: Path, engine: sa.Engine, database_url: str, broker_url: str,
                 procs: Procs) -> None:
        self.tmp_path, self.engine, self.procs = tmp_path, engine, procs
        self.database_url, self.broker_url = database_url, broker_url
        self.data_dir = tmp_path / "data"
        self.emulator: Emulator | None = None
        self.overrides: dict[str, str] = dict(FAST)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a tunectl process: this stack's DB, broker, emulator and timings."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TUNECTL_", "OPENAI_", "DASHSCOPE_", "VERTEXAI_",
                                    "GOOGLE_", "CLOUDSDK_"))}
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
            XDG_DATA_HOME=str(self.tmp_path / "xdg"),
            TUNECTL_DATABASE_URL=self.database_url,
            TUNECTL_BROKER_URL=self.broker_url,
            TUNECTL_DATA_DIR=str(self.data_dir),
            TUNECTL_LOG_FORMAT="json",
            TUNECTL_LOG_LEVEL="info",
            OPENAI_API_KEY=API_KEY,
            DASHSCOPE_API_KEY=API_KEY,
        )
        if self.emulator is not None:
            google = f"{self.emulator.root}/google"
            env["TUNECTL_OPENAI_BASE_URL"] = self.emulator.url
            env["TUNECTL_DASHSCOPE_BASE_URL"] = f"{self.emulator.root}/dashscope/api/v1"
            env.update(TUNECTL_VERTEX_BASE_URL=google, TUNECTL_GCS_BASE_URL=google,
                       TUNECTL_GCS_BUCKET=DEMO_BUCKET,
                       GOOGLE_APPLICATION_CREDENTIALS=str(self.tmp_path / "google-sa.json"))
        env.update(self.overrides)
        env.update(extra)
        return env

    def start_emulator(self, job_duration: float) -> Emulator:
        """Start ``tunectl emulator`` on a free port and wait until it answers."""
        port = free_port()
        proc = self.procs.start("emulator", tunectl_argv(
            "emulator", "--host", "127.0.0.1", "--port", str(port),
            "--job-duration", str(job_duration)), self.env())
        self.emulator = Emulator(proc, port, job_duration)
        self.emulator.wait_ready()
        # A service account whose key the Google emulator knows and whose token_uri it is.
        service_account_file(self.tmp_path / "google-sa.json",
                             token_uri=f"{self.emulator.root}/google/token")
        self.emulator.http.post("/google/_emulator/service-accounts",
                                json=service_account_key()).raise_for_status()
        return self.emulator

    def start_worker(self, concurrency: int = 2, pool: str = "prefork",
                     queues: str | None = None) -> Proc:
        """Start ``tunectl worker`` (on its default queues, or ``queues``) and wait until
        Celery says it is ready."""
        chosen = ["--queues", queues] if queues else []
        proc = self.procs.start("worker", tunectl_argv(
            "worker", "--pool", pool, "--concurrency", str(concurrency), *chosen), self.env())
        proc.wait_for_output("ready.", timeout=60)
        return proc

    def start_scheduler(self) -> Proc:
        """Start ``tunectl scheduler`` and wait until it ticks."""
        proc = self.procs.start("scheduler", tunectl_argv("scheduler"), self.env())
        proc.wait_for_output("scheduler.started", timeout=60)
        return proc

    def start_api(self, port: int) -> Proc:
        """Start ``tunectl api`` on ``port`` and wait until ``/healthz`` answers."""
        proc = self.procs.start("api", tunectl_argv("api", "--port", str(port)), self.env())

        def healthy() -> bool:
            if not proc.alive():
                raise AssertionError(f"api exited:\n{proc.tail()}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=60, interval=0.1, what="the api")
        return proc

    def cli(self, *args: str, timeout: float = 60) -> str:
        """Run a short ``tunectl`` command; its stdout (stderr goes into the failure)."""
        done = subprocess.run(tunectl_argv(*args), env=self.env(), capture_output=True,
                              text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"tunectl {shlex.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done.stdout

    def submit(self, spec: Path) -> dict[str, Any]:
        """``tunectl submit SPEC --json``."""
        job: dict[str, Any] = json.loads(self.cli("submit", str(spec), "--json"))
        return job

    def submit_in_process(self, spec: Path) -> str:
        """Submit through ``orchestrator.jobs.submit`` (no CLI start-up: a burst at once)."""
        blobs = BlobStore(self.data_dir / "blobs")
        return job_ops.submit(self.engine, blobs, load_spec(spec), source=str(spec),
                              project="default").job.id

    def show(self, job_id: str) -> dict[str, Any]:
        """``tunectl show JOB --json`` (with ``history``)."""
        job: dict[str, Any] = json.loads(self.cli("show", job_id, "--json"))
        return job

    def job(self, job_id: str) -> Job:
        """The job row, read from the database."""
        with session_scope(self.engine) as session:
            return job_ops.get(session, job_id)

    def wait_for_state(self, job_id: str, states: set[str], *, timeout: float) -> Job:
        """Wait until the job is in one of ``states``; fail early if it ends elsewhere."""
        def reached() -> Job | None:
            job = self.job(job_id)
            if job.state in states:
                return job
            if job.finished_at is not None:
                raise AssertionError(f"job {job_id} ended {job.state} ({job.error}), "
                                     f"expected {sorted(states)}")
            return None

        found: Job = wait_until(reached, timeout=timeout, interval=0.1,
                                what=f"job {job_id} to reach {sorted(states)}")
        return found


