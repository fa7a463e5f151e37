"""The ``tunectl`` command line (typer + rich).

User errors print one line to stderr and exit 2, with no traceback. ``--json`` output is
meant for scripts and is stable.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from rich.console import Console
from rich.table import Table

from orchestrator import deployments as deployment_ops
from orchestrator import jobs as job_ops
from orchestrator import log
from orchestrator import webhooks as webhook_ops
from orchestrator.blobs import BlobStore
from orchestrator.config import Settings, get_settings
from orchestrator.datasets.cli import app as dataset_app
from orchestrator.db import deployments as deployment_rows
from orchestrator.db.engine import check_migrated, get_engine, session_scope
from orchestrator.db.models import WebhookDelivery
from orchestrator.db.types import utcnow
from orchestrator.documents import (
    EventDoc,
    attempt_json,
    delivery_json,
    deployment_json,
    endpoint_json,
    job_json,
)
from orchestrator.errors import ProviderError, UserError
from orchestrator.remote import RemoteApi
from orchestrator.specs import load_spec

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Run LLM fine-tune jobs across providers, durably.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
webhooks_app = typer.Typer(no_args_is_help=True,
                           help="Webhook notifications: deliveries, attempts and endpoints.")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(dataset_app, name="dataset")
out = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _settings() -> Settings:
    settings = get_settings()
    log.configure(settings.log_format, settings.log_level)
    return settings


def _engine(settings: Settings, *, migrated: bool = True) -> Any:
    engine = get_engine(settings.database_url)
    if migrated:
        check_migrated(engine)
    return engine


def _age(seconds: float) -> str:
    """4s, 12m, 3h05m, 2d04h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _at(text: str | None, fmt: str) -> str:
    return datetime.fromisoformat(text).strftime(fmt) if text else ""


ApiOption = Annotated[str | None, typer.Option(
    "--api", metavar="URL", help="Talk to this tunectl API instead of the database "
    "(default: TUNECTL_API_URL; the token comes from TUNECTL_API_TOKEN).")]


def _remote(settings: Settings, api: str | None) -> RemoteApi | None:
    """The API to talk to, if one is named (--api, else TUNECTL_API_URL)."""
    url = api or settings.api_url
    if not url:
        return None
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return RemoteApi(url, token)


@app.command()
def submit(spec: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.")],
           as_json: JsonFlag = False, api: ApiOption = None) -> None:
    """Submit a job spec; the same idempotency key returns the existing job."""
    settings = _settings()
    loaded = load_spec(spec)
    remote = _remote(settings, api)
    if remote is not None:
        with remote:
            data = remote.submit(loaded)
    else:
        result = job_ops.submit(_engine(settings), BlobStore.from_settings(settings), loaded,
                                source=str(spec), project=settings.default_project,
                                settings=settings)
        data = {**job_json(result.job), "created": result.created}
    if as_json:
        _print_json(data)
        return
    verb = "submitted" if data["created"] else "already submitted (same idempotency key)"
    out.print(f"{data['id']} {verb}: {data['name']} [{data['state']}]")


@app.command("jobs")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    provider: Annotated[str | None, typer.Option(help="Only jobs of this provider.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        help="Only jobs with this label, as key=value (repeat for several).")] = None,
    created_after: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"], help="Only jobs created at or after "
        "this UTC time.")] = None,
    created_before: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"], help="Only jobs created before this "
        "UTC time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JsonFlag = False,
    api: ApiOption = None,
) -> None:
    """List jobs, newest first."""
    settings = _settings()
    where = job_ops.JobFilter(
        state=state, provider=provider,
        labels=tuple(job_ops.parse_label(text) for text in label or ()),
        created_after=created_after and created_after.replace(tzinfo=UTC),
        created_before=created_before and created_before.replace(tzinfo=UTC))
    remote = _remote(settings, api)
    if remote is not None:
        with remote:
            found = remote.jobs(where, limit)
    else:
        with session_scope(_engine(settings)) as session:
            found = [job_json(j) for j in job_ops.list_jobs(session, where, limit=limit).jobs]
    if as_json:
        _print_json(found)
        return
    table = Table("id", "name", "provider", "state", "provider status", "model", "created")
    for j in found:
        table.add_row(j["id"], j["name"], j["provider"], j["state"], j["provider_status"] or "",
                      j["fine_tuned_model"] or "", _at(j["created_at"], "%Y-%m-%d %H:%M:%S"))
    out.print(table)


@app.command()
def show(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    events: Annotated[bool, typer.Option("--events", help="Also fetch the provider job's "
                                         "newest events from the provider.")] = False,
    as_json: JsonFlag = False,
    api: ApiOption = None,
) -> None:
    """Show a job: state, provider status, model, and its transition history."""
    settings = _settings()
    remote = _remote(settings, api)
    if remote is not None:
        with remote:
            data = remote.show(job_id, events=events)
    else:
        data = _show_local(settings, job_id, events=events)
    if as_json:
        _print_json(data)
        return
    out.print(f"[bold]{data['id']}[/bold] {data['name']}: [bold]{data['state']}[/bold]")
    for name, value in (
            ("provider", f"{data['provider']} ({data['base_model']}, {data['method']})"),
            ("provider job", data["provider_job_id"]),
            ("provider status", data["provider_status"]),
            ("tuned model", data["fine_tuned_model"]),
            ("deployed model", data["deployed_model"]), ("error", data["error"]),
            ("failure kind", data.get("failure_kind")),  # older APIs have none
            ("last error", data["last_error"] if data["state"] != "failed" else None)):
        if value:
            out.print(f"  {name}: {value}")
    model_ref = data.get("model_ref") or {}
    if model_ref:  # what a client passes to call the tuned model (LiteLLM's names)
        out.print("  model ref:")
        for key, value in model_ref.items():
            if key != "provider":
                out.print(f"    {key}: {value}", highlight=False)
    table = Table("seq", "at", "from", "to", "provider status", "reason")
    for t in data["history"]:
        table.add_row(str(t["seq"]), _at(t["at"], "%H:%M:%S.%f")[:-3], t["from"] or "",
                      t["to"], t["provider_status"] or "", t["reason"] or "")
    out.print(table)
    if data["deployments"]:
        out.print(_deployments_table(data["deployments"], title="deployments"))
    if "provider_events" in data:
        provider_table = Table("at", "level", "message", title="provider events")
        for e in data["provider_events"]:
            provider_table.add_row(_at(e["at"], "%Y-%m-%d %H:%M:%S"), e["level"], e["message"])
        out.print(provider_table)


def _show_local(settings: Settings, job_id: str, *, events: bool) -> dict[str, Any]:
    with session_scope(_engine(settings)) as session:
        job = job_ops.get(session, job_id)
        data = job_json(job, job_ops.history(session, job_id))
        data["deployments"] = [deployment_json(d)
                               for d in deployment_rows.for_job(session, job_id)]
    if events:
        try:
            found = job_ops.provider_events(settings, job)
        except ProviderError as exc:
            raise UserError(str(exc)) from exc
        data["provider_events"] = [EventDoc.of(e).doc() for e in found]
    return data


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="Job id.")],
           api: ApiOption = None) -> None:
    """Cancel a job (the provider job too, if one exists)."""
    settings = _settings()
    remote = _remote(settings, api)
    if remote is not None:
        with remote:
            data = remote.cancel(job_id)
    else:
        data = job_json(job_ops.cancel(_engine(settings), job_id))
    out.print(f"{data['id']}: {data['state']}")


@app.command()
def deploy(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    capacity: Annotated[int | None, typer.Option(min=1, help="Capacity units (default: the "
                                                 "spec's deploy.capacity, else 1).")] = None,
    ttl_hours: Annotated[float | None, typer.Option(help="Delete it after this many hours "
                                                    "(default: the spec's, else "
                                                    "TUNECTL_DEPLOY_TTL_HOURS).")] = None,
) -> None:
    """Deploy a finished job's tuned model again (after a failed or deleted deployment)."""
    engine = _engine(_settings())
    job = deployment_ops.deploy(engine, job_id, capacity=capacity, ttl_hours=ttl_hours)
    out.print(f"{job.id}: {job.state} ({job.fine_tuned_model}); the deploy step creates the "
              "deployment", highlight=False)


@app.command()
def undeploy(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Delete a job's deployment (it stops billing once the provider has deleted it)."""
    engine = _engine(_settings())
    done = deployment_ops.undeploy(engine, job_id)
    assert done.deployment is not None
    d = done.deployment
    verb = "deleting" if done.changed else "already being deleted"
    out.print(f"{done.job.id}: deployment {d.deployed_model or d.id} {verb}; "
              "`tunectl deployments --all` shows when it is gone", highlight=False)


@app.command("deployments")
def list_deployments(
    everything: Annotated[bool, typer.Option("--all", help="Also deleted and failed ones.")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """List deployments (live ones unless --all), newest first, with age and capacity."""
    engine = _engine(_settings())
    found = [deployment_json(d) for d in deployment_ops.listed(engine, everything=everything)]
    if as_json:
        _print_json(found)
        return
    out.print(_deployments_table(found))


def _deployments_table(found: list[dict[str, Any]], title: str | None = None) -> Table:
    now = utcnow()
    table = Table("id", "job", "deployed model", "state", "provider status", "capacity",
                  "age", "expires in", title=title)
    for d in found:
        expires = ""
        if d["expires_at"] is not None and d["finished_at"] is None:
            left = (datetime.fromisoformat(d["expires_at"]) - now).total_seconds()
            expires = _age(left) if left > 0 else "due"
        table.add_row(d["id"], d["job_id"], d["deployed_model"] or "", d["state"],
                      d["provider_status"] or "", str(d["capacity"]), _age(d["age_s"]),
                      expires)
    return table


def _when(d: WebhookDelivery) -> str:
    at = {"delivered": d.delivered_at, "dead": d.dead_at}.get(d.status, d.next_attempt_at)
    label = {"delivered": "", "dead": ""}.get(d.status, "next ")
    return f"{label}{at:%Y-%m-%d %H:%M:%S}" if at else ""


@webhooks_app.command("deliveries")
def webhook_deliveries(
    event: Annotated[str | None, typer.Argument(help="One event (its webhook-id): show its "
                                                "attempts.")] = None,
    job: Annotated[str | None, typer.Option(help="Only this job's events.")] = None,
    status: Annotated[str | None, typer.Option(help="pending, delivered or dead.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List webhook events newest first, or one event with every attempt."""
    engine = _engine(_settings())
    if event is not None:
        found = webhook_ops.event(engine, event)
        if as_json:
            _print_json({**delivery_json(found.delivery, found.endpoint.url),
                         "payload": json.loads(found.delivery.payload),
                         "attempt_log": [attempt_json(a) for a in found.attempts]})
            return
        d = found.delivery
        out.print(f"[bold]{d.id}[/bold] {d.event_type} of job {d.job_id} to "
                  f"{found.endpoint.url}: [bold]{d.status}[/bold] {_when(d)}", highlight=False)
        table = Table("attempt", "started", "outcome", "status", "latency ms", "error",
                      "response")
        for a in found.attempts:
            table.add_row(str(a.attempt), a.started_at.strftime("%Y-%m-%d %H:%M:%S"), a.outcome,
                          str(a.status_code or ""), f"{a.latency_ms:.1f}" if a.latency_ms
                          else "", a.error or "", (a.response_snippet or "")[:60])
        out.print(table)
        return
    found_all = webhook_ops.deliveries(engine, job_id=job, status=status, limit=limit)
    if as_json:
        _print_json([delivery_json(d, url) for d, url in found_all])
        return
    table = Table("webhook-id", "job", "event", "endpoint", "status", "attempts", "last code",
                  "when")
    for d, url in found_all:
        table.add_row(d.id, d.job_id, d.event_type, url, d.status, str(d.attempts),
                      str(d.last_status_code or ""), _when(d))
    out.print(table)


@webhooks_app.command("redeliver")
def webhook_redeliver(event: Annotated[str, typer.Argument(help="The event's webhook-id.")]
                      ) -> None:
    """Send a webhook event again, with the same webhook-id."""
    settings = _settings()
    found = webhook_ops.redeliver(_engine(settings), event, settings=settings)
    out.print(f"{found.delivery.id}: {found.delivery.event_type} to {found.endpoint.url} is "
              "due again; `tunectl webhooks deliveries "
              f"{found.delivery.id}` shows the attempt", highlight=False)


@webhooks_app.command("endpoints")
def webhook_endpoints(as_json: JsonFlag = False) -> None:
    """List the endpoints webhooks were sent to, and whether a 410 disabled them."""
    found = webhook_ops.endpoints(_engine(_settings()))
    if as_json:
        _print_json([endpoint_json(e) for e in found])
        return
    table = Table("url", "state", "disabled at", "why")
    for e in found:
        table.add_row(e.url, e.state, e.disabled_at.strftime("%Y-%m-%d %H:%M:%S")
                      if e.disabled_at else "", e.disabled_reason or "")
    out.print(table)


@webhooks_app.command("enable")
def webhook_enable(url: Annotated[str, typer.Argument(help="The endpoint's URL.")]) -> None:
    """Enable an endpoint again after a 410 disabled it (redeliver its dead events)."""
    endpoint, changed = webhook_ops.enable(_engine(_settings()), url)
    out.print(f"{endpoint.url}: {'enabled' if changed else 'already enabled'}",
              highlight=False)


@app.command()
def scheduler() -> None:
    """Run the scheduler: re-drive every due job from the database."""
    from orchestrator.scheduler import Scheduler
    from workers.tasks import dispatch

    settings = _settings()
    engine = _engine(settings)
    if settings.metrics_port:
        from orchestrator.metrics import serve_process_metrics

        serve_process_metrics(settings.metrics_port)
    stop = threading.Event()
    Scheduler(settings, engine, dispatch).run(_stop_on_signals(stop))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel steps.")] = 4,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
    queues: Annotated[str, typer.Option(help="Queues to consume, comma-separated: tunectl "
                                        "(job steps, queued submissions) and tunectl.notify "
                                        "(webhook deliveries).")] = "tunectl,tunectl.notify",
) -> None:
    """Run a Celery worker that executes steps, queued submissions and webhook deliveries."""
    from workers.app import QUEUES

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if not wanted or unknown:
        raise UserError(f"--queues {queues!r}: name one or both of {', '.join(QUEUES)}")
    settings = _settings()
    _engine(settings)
    if settings.metrics_port:
        if pool == "prefork":
            _share_metrics_with_children()
        from orchestrator.metrics import serve_process_metrics

        serve_process_metrics(settings.metrics_port)
    _run_worker(pool, concurrency, wanted)


def _share_metrics_with_children() -> None:
    """Make the prefork pool's children count into files the worker's /metrics sums up
    (prometheus_client's multiprocess mode). It has to be set before prometheus_client is
    first imported, which fixes how values are kept."""
    import atexit
    import os
    import shutil
    import tempfile

    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the worker set "
                           "PROMETHEUS_MULTIPROC_DIR: its pool's metrics would be lost")
    shared, owner = tempfile.mkdtemp(prefix="tunectl-metrics-"), os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # never from a pool child that inherited the handler
            shutil.rmtree(shared, ignore_errors=True)

    atexit.register(remove)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default: "
                                             "TUNECTL_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: "
                                             "TUNECTL_API_PORT).")] = None,
) -> None:
    """Serve the HTTP API (docs/api.md)."""
    settings = _settings()
    _serve_api(settings, _engine(settings), host or settings.api_host,
               port or settings.api_port).run()


def _serve_api(settings: Settings, engine: Any, host: str, port: int) -> Any:
    import uvicorn

    from orchestrator.api.app import create_app

    if not settings.api_tokens:
        structlog.get_logger("tunectl.api").warning(
            "api.no_tokens", why="TUNECTL_API_TOKENS is empty: every job request gets 401; "
            "`tunectl api-token` makes a token")
    return uvicorn.Server(uvicorn.Config(create_app(settings, engine), host=host, port=port,
                                         log_config=None, lifespan="off"))


@app.command("api-token")
def api_token(
    project: Annotated[str, typer.Option(help="The project whose jobs the token sees.")],
    name: Annotated[str, typer.Option(help="Who holds it (shown in logs).")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="Also every project's jobs and the "
                                        "operator endpoints.")] = False,
) -> None:
    """Make an API token: prints the token (give it to its holder; it is not stored) and the
    entry to add to TUNECTL_API_TOKENS."""
    from orchestrator.api.auth import hash_token, new_token
    from orchestrator.config import ApiToken, check_project

    token = new_token()
    entry = ApiToken(name=name or project, project=check_project(project, "--project"),
                     sha256=hash_token(token), admin=admin)
    sys.stdout.write(f"token: {token}\nTUNECTL_API_TOKENS entry: "
                     f"{entry.model_dump_json()}\n")


@app.command()
def up(
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel steps.")] = 4,
    with_api: Annotated[bool, typer.Option("--api/--no-api", help="Also serve the HTTP API "
                                           "on TUNECTL_API_HOST:TUNECTL_API_PORT.")] = True,
) -> None:
    """Run the scheduler, a worker and the API in one process (the embedded default needs
    no servers)."""
    from orchestrator.scheduler import Scheduler
    from workers.app import QUEUES
    from workers.tasks import dispatch

    settings = _settings()
    engine = _engine(settings)
    stop = threading.Event()
    threads = [threading.Thread(target=Scheduler(settings, engine, dispatch).run, args=(stop,),
                                name="scheduler", daemon=True)]
    server = _serve_api(settings, engine, settings.api_host, settings.api_port) \
        if with_api else None
    if server is not None:
        threads.append(threading.Thread(target=server.run, name="api", daemon=True))
    for thread in threads:
        thread.start()
    try:
        _run_worker("threads", concurrency, QUEUES)
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        for thread in threads:
            thread.join(timeout=10)


def _run_worker(pool: str, concurrency: int, queues: Sequence[str]) -> None:
    from workers.app import app as celery_app

    celery_app.worker_main([
        "worker", "--pool", pool, "--concurrency", str(concurrency),
        "--queues", ",".join(queues),
        "--loglevel", get_settings().log_level.upper(), "--without-gossip", "--without-mingle",
    ])


def _stop_on_signals(stop: threading.Event) -> threading.Event:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to this version."""
    from orchestrator.db.migrate import current_revision, upgrade

    engine = _engine(_settings(), migrated=False)
    upgrade(engine)
    out.print(f"database at revision {current_revision(engine)}")


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    job_duration: Annotated[float, typer.Option(min=0, help="Seconds a job trains.")] = 3.0,
    api_key: Annotated[str | None, typer.Option(help="Accept only this key.")] = None,
) -> None:
    """Serve every provider's emulator from one process (OpenAI at /v1, DashScope at
    /dashscope/api/v1, Google's OAuth, Cloud Storage and Vertex AI at /google)."""
    from orchestrator.providers.emulation import combined_app, installed_emulators, serve

    _settings()
    mounts = installed_emulators(job_duration_s=job_duration, api_key=api_key)
    for m in mounts:
        out.print(f"{m.title} emulator on http://{host}:{port}{m.prefix}{m.api_path}",
                  highlight=False)
    serve(host, port, combined_app(mounts))


@app.command()
def demo(
    job_duration: Annotated[float, typer.Option(min=0, help="Seconds each job trains.")] = 4.0,
    timeout: Annotated[float, typer.Option(min=10, help="Give up after this many seconds.")] = 180,
) -> None:
    """Start the emulator and the daemon, submit the example jobs, and watch them run."""
    from orchestrator.demo import run_demo

    raise typer.Exit(run_demo(out, job_duration=job_duration, timeout=timeout))


def main() -> None:
    """Entry point: run the CLI, turning user errors into one line and exit status 2.

    Click handles usage errors itself (exit 2) and lets every other exception through.
    """
    try:
        app()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")  # one line, never wrapped
        sys.exit(2)


if __name__ == "__main__":
    main()
