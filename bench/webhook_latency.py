"""Webhook latency: from a job ending at the provider to tunectl's webhook arriving at the
user's receiver, with OpenAI's inbound webhooks on and with polling only, in one run.

One set of processes serves both measurements: the emulator (``tunectl emulator``),
``tunectl api``, ``tunectl scheduler`` and ``tunectl worker``, all with the same settings
(poll interval, scheduler tick). A verifying receiver (orchestrator/notify/receiver.py)
in this process is the one global endpoint (``TUNECTL_WEBHOOKS``, event ``succeeded``).

(a) inbound webhooks on: the emulator sends OpenAI's signed ``fine_tuning.job.succeeded``
    to ``tunectl api`` when a job ends, which has that job polled at once.
(b) polling only: the emulator sends no webhooks; the job is seen at its next poll.

For each, N jobs are submitted at a steady rate over a window (``--spread``), as jobs
arrive in real use; job i trains for ``--duration`` + i/N poll intervals at the emulator, so
that jobs end at every phase of their poll cycle, not in step with it; each job's
latency is the receiver's arrival time minus the moment the job ended at the emulator
(``GET /_emulator/jobs``, unrounded; both clocks are this machine's). Targets: p99 under
1 s with inbound webhooks; under the poll interval plus 1 s with polling only.

Run (from the repo root, in the venv):

    python bench/webhook_latency.py --stack production --redis-url redis://127.0.0.1:6379/14
    python bench/webhook_latency.py --stack embedded
    python bench/webhook_latency.py --help

The production stack makes (and drops) its own database next to ``--pg-url`` and flushes
the Redis DB of ``--redis-url``. Everything else lives in a temp directory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from _support import (
    DEFAULT_PG_ADMIN_URL,
    VENV_BIN,
    run_in_temp_dir,
    stack_urls,
    starter,
    tunectl_argv,
    write_spec,
)

from orchestrator.loopback import free_port, wait_http

API_KEY = "sk-bench-0123456789"


def parse_args() -> argparse.Namespace:
    default_stack = os.environ.get("TUNECTL_BENCH_STACK",
                                   os.environ.get("TUNECTL_TEST_STACK", "embedded"))
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=["embedded", "production"], default=default_stack)
    parser.add_argument("--jobs", type=int, default=100, help="jobs per measurement")
    parser.add_argument("--poll-interval", type=float, default=5.0,
                        help="TUNECTL_POLL_INTERVAL_S for both measurements")
    parser.add_argument("--tick", type=float, default=1.0,
                        help="TUNECTL_SCHEDULER_TICK_S (the default is the production one)")
    parser.add_argument("--spread", type=float, default=30.0,
                        help="seconds over which the jobs are submitted")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds the first job trains at the emulator (job i: + i/N "
                             "poll intervals)")
    parser.add_argument("--concurrency", type=int, default=4, help="worker concurrency")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="Redis broker (this DB is flushed)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--log-level", default="warning", help="of the tunectl processes")
    return parser.parse_args()


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def run(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> dict[str, Any]:
    from orchestrator.notify.receiver import Receiver

    database_url, broker_url = stack_urls(args.stack, tmp, stack, pg_url=args.pg_url,
                                          redis_url=args.redis_url)
    receiver_secret, openai_secret = whsec(), whsec()
    receiver = stack.enter_context(Receiver(receiver_secret))
    port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNECTL_", "OPENAI_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
        XDG_DATA_HOME=str(tmp / "xdg"), TUNECTL_DATA_DIR=str(tmp / "data"),
        TUNECTL_DATABASE_URL=database_url, TUNECTL_BROKER_URL=broker_url,
        TUNECTL_OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", OPENAI_API_KEY=API_KEY,
        TUNECTL_POLL_INTERVAL_S=str(args.poll_interval),
        TUNECTL_SCHEDULER_TICK_S=str(args.tick), TUNECTL_LOG_FORMAT="json",
        TUNECTL_LOG_LEVEL=args.log_level,
        TUNECTL_WEBHOOKS=json.dumps([{"url": receiver.url, "events": ["succeeded"]}]),
        TUNECTL_WEBHOOK_SECRET=receiver_secret,
        TUNECTL_WEBHOOK_ALLOW_NETWORKS=json.dumps([f"127.0.0.1:{receiver.port}"]),
        OPENAI_WEBHOOK_SECRET=openai_secret,
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith(("TUNECTL_", "OPENAI_"))})
    start = starter(stack, env, tmp)

    deadline = time.monotonic() + 60
    start("emulator", tunectl_argv("emulator", "--port", str(port)))
    admin = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    stack.callback(admin.close)
    wait_http(f"http://127.0.0.1:{port}/_emulator/stats", deadline)
    subprocess.run(tunectl_argv("db", "upgrade"), env=env, check=True,
                   stdout=subprocess.DEVNULL)
    start("api", tunectl_argv("api", "--port", str(api_port)))
    wait_http(f"http://127.0.0.1:{api_port}/healthz", deadline)
    start("worker", tunectl_argv("worker", "--pool", "prefork",
                                 "--concurrency", str(args.concurrency)))
    start("scheduler", tunectl_argv("scheduler"))
    time.sleep(3)  # the worker's pool is up and the scheduler ticks

    from orchestrator import jobs as job_ops
    from orchestrator.blobs import BlobStore
    from orchestrator.db.engine import make_engine
    from orchestrator.specs import load_spec

    engine = make_engine(database_url)
    stack.callback(engine.dispose)
    spec = load_spec(write_spec(tmp, "latency"))
    blobs = BlobStore(tmp / "data" / "blobs")
    figures: dict[str, Any] = {"database_url": database_url, "broker_url": broker_url}
    for mode, hooks in (("inbound webhooks", True), ("polling only", False)):
        webhooks = {"url": f"http://127.0.0.1:{api_port}/webhooks/openai",
                    "secret": openai_secret} if hooks else None
        admin.put("/_emulator/scenario", json={"job_duration_s": 3.0, "webhooks": webhooks}
                  ).raise_for_status()
        first = len(receiver.received)
        ids = []
        started = time.monotonic()
        for i in range(args.jobs):
            time.sleep(max(0.0, started + args.spread * i / args.jobs - time.monotonic()))
            trains = args.duration + args.poll_interval * i / args.jobs
            ids.append(job_ops.submit(engine, blobs, spec.model_copy(update={"labels": {
                "emulator_duration_s": f"{trains:.3f}", "bench": mode}}),
                source="bench", project="bench").job.id)
        figures[mode] = measure(engine, admin, receiver, ids, first,
                                time.monotonic() + args.timeout)
    return figures


def measure(engine: Any, admin: httpx.Client, receiver: Any, ids: list[str], first: int,
            deadline: float) -> dict[str, Any]:
    """Wait for every job's webhook; each one's latency from its end at the emulator."""
    import sqlalchemy as sa

    wanted = set(ids)
    while True:
        arrived = {r.payload["data"]["job"]["id"]: r.arrived_at
                   for r in receiver.verified()[first:] if r.payload}
        if wanted <= set(arrived):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(wanted & set(arrived))} of {len(ids)} webhooks came")
        time.sleep(0.2)
    with engine.connect() as conn:
        provider_ids = dict(conn.execute(sa.text(
            "SELECT id, provider_job_id FROM jobs WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)), {"ids": ids}).all())
    ended = {j["id"]: j["ended_at"] for j in admin.get("/_emulator/jobs").json()}
    latencies = [arrived[job_id] - ended[provider_ids[job_id]] for job_id in ids]
    duplicates = len([r for r in receiver.verified()[first:]]) - len(ids)
    return {"latencies": latencies, "duplicates": duplicates}


def report(args: argparse.Namespace, f: dict[str, Any]) -> None:
    targets = {"inbound webhooks": 1.0, "polling only": args.poll_interval + 1.0}
    print(f"tunectl webhook latency, stack={args.stack}")
    print(f"  database: {f['database_url']}")
    print(f"  broker:   {f['broker_url']}")
    print(f"  settings: poll interval {args.poll_interval:g} s, scheduler tick {args.tick:g} s, "
          f"worker --pool prefork --concurrency {args.concurrency}, 1 scheduler, 1 api")
    print(f"  jobs:     {args.jobs} per measurement, submitted over {args.spread:g} s, "
          f"training {args.duration:g}-{args.duration + args.poll_interval:g} s; latency = "
          "receiver arrival - job end at the emulator")
    print(f"  machine:  {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print()
    print(f"  {'':<18}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'mean':>9}  target p99")
    for mode, target in targets.items():
        values = f[mode]["latencies"]
        p99 = percentile(values, 99)
        cells = "".join(f"{v:>8.3f}s" for v in (
            percentile(values, 50), percentile(values, 90), p99, max(values),
            statistics.fmean(values)))
        verdict = "met" if p99 < target else "MISSED"
        extra = f", {f[mode]['duplicates']} duplicate deliveries" if f[mode]["duplicates"] else ""
        print(f"  {mode:<18}{cells}  < {target:g} s: {verdict}{extra}")


def main() -> int:
    args = parse_args()
    return run_in_temp_dir(args, run, report)


if __name__ == "__main__":
    sys.exit(main())
