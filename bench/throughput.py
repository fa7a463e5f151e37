"""Throughput: how close full job lifecycles get to the broker's raw task rate.

One run, one broker, the same Celery app settings (acks_late, prefetch 1, …) and the same
worker pool and concurrency for both measurements:

(a) raw Celery no-op tasks per second: a no-op task registered only here (``bench.noop``)
    on tunectl's own Celery app; a real ``worker`` process is started and warmed up, then
    N tasks are sent and drained; measured from the first send to the last completion
    (each no-op appends one byte to a file; completion = the file holding N bytes).
(b) full lifecycles per second: N jobs (one shared small dataset) against the OpenAI
    emulator with instant jobs (``--job-duration 0``), through real ``tunectl worker`` and
    ``tunectl scheduler`` processes. The jobs are submitted while the scheduler is stopped;
    measured from the scheduler's start to the last job's ``finished_at``.
(c) Celery step tasks actually executed per lifecycle (the worker's own "Task
    tunectl.step.<name>[…] succeeded" lines, so stale/duplicate deliveries count too), the
    transitions per job from the history table, and the ratio
    lifecycles/s * step tasks per lifecycle / no-op tasks/s (target >= 0.5).

Run (from the repo root, in the venv):

    python bench/throughput.py --stack production    # PostgreSQL + Redis on loopback
    python bench/throughput.py --stack embedded      # SQLite + Celery's SQLAlchemy transport
    python bench/throughput.py --help

The production stack makes (and drops) its own database next to ``--pg-url`` and uses
Redis DB 13 of ``--redis-url`` (flushed). Everything else lives in a temp directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _support import (
    DEFAULT_PG_ADMIN_URL,
    VENV_BIN,
    Child,
    run_in_temp_dir,
    stack_urls,
    starter,
    tunectl_argv,
    write_spec,
)

from orchestrator.loopback import free_port, wait_http

TASK_LINE = re.compile(r"Task (tunectl\.step\.\w+)\[[^\]]+\] (succeeded|raised|failed|retry)"
                       r"(?: in ([0-9.e-]+)s)?")
API_KEY = "sk-bench-0123456789"


def noop_worker(pool: str, concurrency: int) -> None:
    """Child mode: tunectl's worker, exactly as ``tunectl worker`` runs it, plus bench.noop."""
    from orchestrator.cli import _run_worker
    from workers.app import QUEUES, app

    sink = os.environ["BENCH_NOOP_FILE"]

    @app.task(name="bench.noop")  # type: ignore[misc]
    def noop() -> None:
        fd = os.open(sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)

    _run_worker(pool, concurrency, QUEUES)


def parse_args() -> argparse.Namespace:
    default_stack = os.environ.get("TUNECTL_BENCH_STACK",
                                   os.environ.get("TUNECTL_TEST_STACK", "embedded"))
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=["embedded", "production"], default=default_stack,
                        help="embedded: SQLite + SQLA transport; production: PostgreSQL + "
                             "Redis (default: $TUNECTL_BENCH_STACK, $TUNECTL_TEST_STACK, "
                             "embedded)")
    parser.add_argument("--noop-tasks", type=int, default=2000, help="N for (a)")
    parser.add_argument("--jobs", type=int, default=300, help="N for (b)")
    parser.add_argument("--pool", default="prefork", help="Celery pool for both runs")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="worker concurrency for both runs (the Procfile's is 4)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL,
                        help="PostgreSQL to create the bench database in")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13",
                        help="Redis broker (this DB is flushed)")
    parser.add_argument("--timeout", type=float, default=900, help="give up after (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--noop-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def log_time(child: Child, event: str) -> datetime:
    """The timestamp of the first JSON log line of ``event``."""
    for line in child.output().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            return datetime.fromisoformat(json.loads(line)["timestamp"])
    raise RuntimeError(f"{child.name} never logged {event}")


def run(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> dict[str, Any]:
    database_url, broker_url = stack_urls(args.stack, tmp, stack, pg_url=args.pg_url,
                                          redis_url=args.redis_url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNECTL_", "OPENAI_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
        XDG_DATA_HOME=str(tmp / "xdg"), TUNECTL_DATA_DIR=str(tmp / "data"),
        TUNECTL_DATABASE_URL=database_url, TUNECTL_BROKER_URL=broker_url,
        TUNECTL_OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", OPENAI_API_KEY=API_KEY,
        TUNECTL_POLL_INTERVAL_S="0.1", TUNECTL_SCHEDULER_TICK_S="0.1", TUNECTL_LEASE_S="300",
        TUNECTL_RETRY_BASE_S="0.5", TUNECTL_LOG_FORMAT="json", TUNECTL_LOG_LEVEL="info",
        BENCH_NOOP_FILE=str(tmp / "noop.count"),
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith(("TUNECTL_", "OPENAI_"))})
    start = starter(stack, env, tmp)

    started = time.monotonic()
    emulator = start("emulator", tunectl_argv("emulator", "--port", str(port),
                                              "--job-duration", "0"))
    emulator.wait_for("OpenAI emulator on")
    wait_http(f"http://127.0.0.1:{port}/_emulator/stats", started + 60)
    subprocess.run(tunectl_argv("db", "upgrade"), env=env, check=True,
                   stdout=subprocess.DEVNULL)
    figures: dict[str, Any] = {"database_url": database_url, "broker_url": broker_url}

    # (a) no-op tasks through tunectl's own app (same conf), drained by a real worker.
    from workers.app import QUEUE, app

    figures["conf"] = {k: app.conf[k] for k in (
        "task_acks_late", "task_reject_on_worker_lost", "worker_prefetch_multiplier",
        "task_ignore_result", "task_time_limit")}
    worker = start("noop-worker", [sys.executable, str(Path(__file__).resolve()),
                                   "--noop-worker", "--pool", args.pool,
                                   "--concurrency", str(args.concurrency)])
    worker.wait_for("ready.")
    sink = Path(env["BENCH_NOOP_FILE"])
    warmup = 2 * args.concurrency
    for _ in range(warmup):
        app.send_task("bench.noop", queue=QUEUE)
    wait_size(sink, warmup, time.monotonic() + 60)
    first_send = time.perf_counter()
    for _ in range(args.noop_tasks):
        app.send_task("bench.noop", queue=QUEUE)
    sent = time.perf_counter()
    wait_size(sink, warmup + args.noop_tasks, time.monotonic() + args.timeout)
    drained = time.perf_counter()
    figures["noop_s"] = drained - first_send
    figures["noop_send_s"] = sent - first_send
    worker.kill()

    # (b) full lifecycles: jobs submitted while no scheduler runs, then the scheduler starts.
    from orchestrator import jobs as job_ops
    from orchestrator.blobs import BlobStore
    from orchestrator.db.engine import make_engine
    from orchestrator.specs import load_spec

    worker = start("worker", tunectl_argv("worker", "--pool", args.pool,
                                          "--concurrency", str(args.concurrency)))
    worker.wait_for("ready.")
    engine = make_engine(database_url)
    stack.callback(engine.dispose)
    spec = load_spec(write_spec(tmp))
    blobs = BlobStore(tmp / "data" / "blobs")
    submit_started = time.perf_counter()
    for _ in range(args.jobs):
        job_ops.submit(engine, blobs, spec, source="bench", project="default")
    figures["submit_s"] = time.perf_counter() - submit_started
    scheduler = start("scheduler", tunectl_argv("scheduler"))
    deadline = time.monotonic() + args.timeout
    while True:
        with engine.connect() as conn:
            states = Counter(dict(conn.exec_driver_sql(
                "SELECT state, count(*) FROM jobs GROUP BY state").all()))
        if sum(states[s] for s in ("succeeded", "failed", "cancelled")) == args.jobs:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; jobs by state: {dict(states)}")
        time.sleep(0.2)
    figures["states"] = dict(states)
    with engine.connect() as conn:
        last_finished = conn.exec_driver_sql("SELECT max(finished_at) FROM jobs").scalar_one()
        figures["transitions"] = conn.exec_driver_sql(
            "SELECT count(*) FROM job_transitions").scalar_one()
    if isinstance(last_finished, str):  # SQLite: naive UTC text
        last_finished = datetime.fromisoformat(last_finished).replace(tzinfo=UTC)
    elif last_finished.tzinfo is None:
        last_finished = last_finished.replace(tzinfo=UTC)
    figures["lifecycle_s"] = (last_finished - log_time(scheduler, "scheduler.started")
                              ).total_seconds()

    # (c) the step tasks the worker actually executed.
    time.sleep(1)  # let the worker flush the log lines of its last tasks
    executed: Counter[str] = Counter()
    durations: dict[str, list[float]] = {}
    for match in TASK_LINE.finditer(worker.output()):
        step = match.group(1).removeprefix("tunectl.step.")
        executed[step] += 1
        if match.group(3):
            durations.setdefault(step, []).append(float(match.group(3)) * 1000)
    figures["steps"] = dict(executed)
    figures["step_ms"] = {k: statistics.median(v) for k, v in durations.items()}
    figures["skipped"] = worker.output().count('"step.skipped"')
    return figures


def wait_size(path: Path, size: int, deadline: float) -> None:
    """Wait until ``path`` holds ``size`` bytes (one per finished no-op)."""
    while not path.exists() or path.stat().st_size < size:
        if time.monotonic() > deadline:
            have = path.stat().st_size if path.exists() else 0
            raise RuntimeError(f"only {have} of {size} no-op tasks finished")
        time.sleep(0.002)


def main() -> int:
    args = parse_args()
    if args.noop_worker:
        noop_worker(args.pool, args.concurrency)
        return 0
    return run_in_temp_dir(args, run, report)


def report(args: argparse.Namespace, f: dict[str, Any]) -> None:
    """Print the figures and the settings they were measured with."""
    noop_rate = args.noop_tasks / f["noop_s"]
    life_rate = args.jobs / f["lifecycle_s"]
    steps = sum(f["steps"].values())
    per_life = steps / args.jobs
    ratio = life_rate * per_life / noop_rate
    order = ["validate", "upload", "submit", "poll", "finalize", "cancel"]
    breakdown = ", ".join(f"{k} {f['steps'][k]}" for k in order if k in f["steps"])
    rows = [
        ("(a) no-op Celery tasks/s", f"{noop_rate:,.1f}",
         f"{args.noop_tasks} tasks in {f['noop_s']:.2f}s (sending took {f['noop_send_s']:.2f}s)"),
        ("(b) full lifecycles/s", f"{life_rate:,.2f}",
         f"{args.jobs} jobs in {f['lifecycle_s']:.2f}s; end states {f['states']}"),
        ("(c) step tasks per lifecycle", f"{per_life:.2f}",
         f"{steps} executed: {breakdown}; {f['skipped']} skipped as stale"),
        ("    median ms per step task", "",
         ", ".join(f"{k} {f['step_ms'][k]:.1f}" for k in order if k in f["step_ms"])
         + " (Celery's own 'succeeded in')"),
        ("    transitions per lifecycle", f"{f['transitions'] / args.jobs:.2f}",
         f"{f['transitions']} history rows"),
        ("    step tasks/s in (b)", f"{life_rate * per_life:,.1f}", "lifecycles/s x steps"),
        ("ratio (b)x(c)/(a)", f"{ratio:.3f}",
         "target >= 0.5: " + ("met" if ratio >= 0.5 else "MISSED")),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"tunectl throughput, stack={args.stack}")
    print(f"  database: {f['database_url']}")
    print(f"  broker:   {f['broker_url']}")
    print(f"  worker:   --pool {args.pool} --concurrency {args.concurrency} (one process, "
          f"both runs); Celery conf {f['conf']}")
    print("  lifecycle: emulator --job-duration 0, one shared 12-example dataset, "
          "poll 0.1s, scheduler tick 0.1s, 1 scheduler")
    print(f"  machine:  {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; jobs submitted "
          f"in-process before the scheduler started ({f['submit_s']:.1f}s, not timed)")
    print()
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>{value_width}}  {note}")


if __name__ == "__main__":
    sys.exit(main())
