"""``tunectl demo``: the emulators, the daemon and the example jobs, watched live: three
OpenAI jobs, a DashScope job that deploys its tuned model, and a Vertex job whose tuned
Gemini endpoint is then asked a question through the emulator; each outcome is notified by a
signed webhook to a local receiver that verifies it with ``standardwebhooks``.

Everything runs on the embedded default (SQLite + Celery's SQLAlchemy transport) in
``<data dir>/demo``, which the demo wipes first: no servers, no keys, no cost. The OpenAI
emulator also sends its fine-tuning webhooks to ``tunectl api``, as OpenAI would.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlmodel import col, select

from orchestrator import jobs as job_ops
from orchestrator.blobs import BlobStore
from orchestrator.config import Settings, get_settings
from orchestrator.db.engine import make_engine, session_scope
from orchestrator.db.models import Job, JobTransition
from orchestrator.errors import ProviderError, UserError
from orchestrator.loopback import free_port, wait_http
from orchestrator.notify.receiver import Received, Receiver
from orchestrator.providers import registry
from orchestrator.providers.base import Prompter, connect
from orchestrator.providers.vertex.emulator import DEMO_BUCKET
from orchestrator.specs import load_spec
from orchestrator.states import TERMINAL

#: Each example spec and the state it should end in.
EXAMPLES = {
    "support-bot.yaml": "succeeded",
    "tone-dpo.yaml": "succeeded",
    "broken-dataset.yaml": "failed",
    "provider-failure.yaml": "failed",
    "qwen-support.yaml": "succeeded",
    "gemini-support.yaml": "succeeded",
}
#: What the demo asks each tuned model that can be called (a line of support-train.jsonl).
QUESTION = "How do I reset my password?"
#: The events the demo's receiver asks for (every example notifies exactly one).
EVENTS = ["succeeded", "failed", "cancelled", "deployed", "undeployed"]
#: How long to wait for the last webhooks once every job has ended.
WEBHOOK_GRACE_S = 15.0


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _use_environment(env: dict[str, str]) -> Callable[[], None]:
    """Make ``env`` this process's whole environment (and settings); return what puts the
    one before back."""
    saved = dict(os.environ)

    def use(values: dict[str, str]) -> None:
        os.environ.clear()
        os.environ.update(values)
        get_settings.cache_clear()

    use(env)
    return lambda: use(saved)


def _tunectl(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env,
                                stdout=sink, stderr=sink)


def run_demo(console: Console, *, job_duration: float, timeout: float) -> int:
    """Run the demo; return 0 if every example ended as expected."""
    settings = Settings()
    home = settings.data_dir / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port, api_port = free_port(), free_port()
    receiver_secret, openai_secret = _secret(), _secret()
    receiver = Receiver(receiver_secret).start()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNECTL_", "OPENAI_", "DASHSCOPE_", "VERTEXAI_", "GOOGLE_",
                                "CLOUDSDK_"))}
    env.update(TUNECTL_DATA_DIR=str(home), TUNECTL_OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
               TUNECTL_DASHSCOPE_BASE_URL=f"http://127.0.0.1:{port}/dashscope/api/v1",
               OPENAI_API_KEY="sk-emulator-demo", DASHSCOPE_API_KEY="sk-emulator-demo",
               TUNECTL_POLL_INTERVAL_S="0.5",
               TUNECTL_SCHEDULER_TICK_S="0.2", TUNECTL_RETRY_BASE_S="0.5",
               TUNECTL_API_PORT=str(api_port),
               # Every outcome goes to the receiver; the SSRF guard lets loopback through
               # only because the allow-list names it.
               TUNECTL_WEBHOOKS=json.dumps([{"url": receiver.url, "events": EVENTS}]),
               TUNECTL_WEBHOOK_SECRET=receiver_secret,
               TUNECTL_WEBHOOK_ALLOW_NETWORKS=json.dumps([f"127.0.0.1:{receiver.port}"]),
               OPENAI_WEBHOOK_SECRET=openai_secret)
    google = f"http://127.0.0.1:{port}/google"
    key_file = home / "google-service-account.json"
    env.update(TUNECTL_VERTEX_BASE_URL=google, TUNECTL_GCS_BASE_URL=google,
               TUNECTL_GCS_BUCKET=DEMO_BUCKET, GOOGLE_APPLICATION_CREDENTIALS=str(key_file))
    log = home / "daemon.log"
    console.print(f"[bold]tunectl demo[/bold]: data in {home}, logs in {log}", highlight=False)
    children: list[subprocess.Popen[bytes]] = []
    # This process submits the examples (and writes their first webhook events) as the
    # daemon runs them: with the daemon's environment, not the shell's.
    restore = _use_environment(env)
    demo_settings = get_settings()
    try:
        children.append(_tunectl("emulator", "--port", str(port), "--job-duration",
                                 str(job_duration), env=env, log=log))
        deadline = time.monotonic() + 30
        wait_http(f"http://127.0.0.1:{port}/_emulator/stats", deadline)
        # As an OpenAI project's webhook endpoint would: job events go to tunectl api.
        httpx.put(f"http://127.0.0.1:{port}/_emulator/scenario", timeout=5, json={
            "job_duration_s": job_duration, "webhooks": {
                "url": f"http://127.0.0.1:{api_port}/webhooks/openai",
                "secret": openai_secret}}).raise_for_status()
        console.print(f"OpenAI emulator listening on http://127.0.0.1:{port}/v1, DashScope "
                      f"on http://127.0.0.1:{port}/dashscope/api/v1, Google (Vertex AI, Cloud "
                      f"Storage, OAuth) on {google}", highlight=False)
        # A service-account key the Google emulator made; the daemon signs in with it.
        key = httpx.post(f"{google}/_emulator/service-accounts/keys", json={}, timeout=30)
        key.raise_for_status()
        key_file.touch(mode=0o600)
        key_file.write_text(json.dumps(key.json()))
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "db", "upgrade"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        children.append(_tunectl("up", env=env, log=log))
        wait_http(f"http://127.0.0.1:{api_port}/healthz", deadline)
        console.print("daemon started (scheduler + worker + API, SQLite + SQLAlchemy broker), "
                      f"API on http://127.0.0.1:{api_port} (jobs, and OpenAI's webhooks)",
                      highlight=False)
        console.print(f"webhook receiver on {receiver.url}: it verifies every signature "
                      "with standardwebhooks\n", highlight=False)
        engine = make_engine(demo_settings.database_url)
        blobs = BlobStore.from_settings(demo_settings)
        names: dict[str, str] = {}
        for example in EXAMPLES:
            path = Path(str(files("orchestrator.examples") / example))
            job = job_ops.submit(engine, blobs, load_spec(path), source=example,
                                 project=demo_settings.default_project,
                                 settings=demo_settings).job
            names[job.id] = job.name
            console.print(f"submitted [bold]{job.name}[/bold] as {job.id}", highlight=False)
        console.print()
        finished = _watch(console, engine, names, receiver, time.monotonic() + timeout)
        with session_scope(engine) as session:
            final = {j.name: j for j in session.exec(select(Job))}
        _summary(console, list(final.values()))
        _ask_tuned_models(console, demo_settings, list(final.values()))
        if not finished:
            console.print(f"[red]timed out after {timeout:.0f}s[/red]")
            return 1
        wrong = [n for n, j in final.items() if EXAMPLES[f"{n}.yaml"] != j.state]
        for name in wrong:
            console.print(f"[red]{name} ended {final[name].state}, expected "
                          f"{EXAMPLES[name + '.yaml']}[/red]")
        got = {r.payload["data"]["job"]["name"] for r in receiver.verified() if r.payload}
        forged = [r for r in receiver.received if not r.verified]
        console.print(f"\nwebhooks: {len(got)} of {len(final)} jobs notified, every signature "
                      "verified" if not forged else f"[red]{len(forged)} webhooks did not "
                      "verify[/red]", highlight=False)
        console.print(f"\nInspect: TUNECTL_DATA_DIR={home} tunectl show "
                      f"{final['support-bot'].id}; the Gemini job's model_ref: "
                      f"TUNECTL_DATA_DIR={home} tunectl show {final['gemini-support'].id}; "
                      f"deployments: TUNECTL_DATA_DIR={home} tunectl deployments; webhooks: "
                      f"TUNECTL_DATA_DIR={home} tunectl webhooks deliveries",
                      highlight=False, soft_wrap=True)
        return 1 if wrong or forged or len(got) != len(final) else 0
    finally:
        restore()
        receiver.stop()
        for child in reversed(children):
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def _watch(console: Console, engine: object, names: dict[str, str], receiver: Receiver,
           deadline: float) -> bool:
    """Print every transition as it is committed, and every webhook as it arrives, until all
    jobs are terminal and each has been notified (or a grace period has passed)."""
    seen = heard = 0
    width = max(len(n) for n in names.values())
    ended_at: float | None = None
    while time.monotonic() < deadline:
        with session_scope(engine) as session:  # type: ignore[arg-type]
            rows = list(session.exec(select(JobTransition).where(col(JobTransition.id) > seen)
                                     .order_by(col(JobTransition.id))))
            states = [j.state for j in session.exec(select(Job))]
        for t in rows:
            seen = max(seen, t.id or 0)
            arrow = (f"{t.from_state or '':>10} → [bold]{t.to_state}[/bold]"
                     if t.from_state != t.to_state else f"{'':>10}   {t.to_state}")
            status = f" ({t.provider_status})" if t.provider_status else ""
            console.print(f"{t.at:%H:%M:%S.%f}"[:-3] + f"  {names[t.job_id]:<{width}}  "
                          f"{arrow}{escape(status)}  [dim]{escape(t.reason or '')}[/dim]",
                          highlight=False)
        got = receiver.received[heard:]
        heard += len(got)
        for request in got:
            console.print(_heard(request, width), highlight=False)
        if states and all(s in TERMINAL for s in states):
            ended_at = ended_at or time.monotonic()
            notified = {r.payload["data"]["job"]["id"] for r in receiver.verified()
                        if r.payload}
            if notified >= set(names) or time.monotonic() - ended_at > WEBHOOK_GRACE_S:
                return True
        time.sleep(0.2)
    return False


def _ask_tuned_models(console: Console, settings: Settings, jobs: list[Job]) -> None:
    """Ask every succeeded job's tuned model that can be called directly (its provider's
    client is a Prompter) the demo's question, through the emulator."""
    with httpx.Client(timeout=30) as http:
        for job in jobs:
            model_ref = job.result.get("model_ref")
            if job.state != "succeeded" or not model_ref:
                continue
            try:
                client = connect(registry.get(job.provider), settings, http,
                                 job.spec.get("provider_options"))
            except UserError:  # the demo holds no key of its own for the other providers
                continue
            if not isinstance(client, Prompter):
                continue
            try:
                answer = escape(client.ask(model_ref, QUESTION))
            except ProviderError as exc:
                answer = f"[red]failed: {escape(str(exc))}[/red]"
            console.print(f"\n[bold]{job.name}[/bold]'s tuned model "
                          f"({escape(str(model_ref.get('model')))}) answers "
                          f"{QUESTION!r}:\n  {answer}", highlight=False)


def _heard(request: Received, width: int) -> str:
    """One line for a webhook the receiver got."""
    at = f"{datetime.fromtimestamp(request.arrived_at, UTC):%H:%M:%S.%f}"[:-3]
    if request.payload is None:
        return f"{at}  {'webhook':<{width}}  [red]signature did not verify: " \
            f"{escape(request.error or '')}[/red]"
    job = request.payload["data"]["job"]
    return (f"{at}  {'webhook':<{width}}  [bold]{request.type}[/bold] for {job['name']} "
            f"(webhook-id {request.webhook_id}), signature verified")


def _summary(console: Console, jobs: list[Job]) -> None:
    table = Table("job", "state", "tuned model / reason", "deployed model", title="Result")
    for job in sorted(jobs, key=lambda j: j.created_at):
        detail = job.fine_tuned_model or job.error or ""
        table.add_row(job.name, job.state, escape(detail), escape(job.deployed_model or ""))
    console.print()
    console.print(table)
