"""Prometheus metrics, of two kinds (docs/metrics.md says why):

- **Fleet-wide, read from the database at scrape time** (``DatabaseCollector``, served by
  the API's ``/metrics``): jobs by state, transitions, scheduler lag, live deployments,
  webhook events and attempts.
  The database already holds every process's work, so any one API replica reports the
  whole fleet, however many schedulers and workers run on however many machines.
- **Process-local** (the module-level metrics below): step durations, webhook attempt
  durations and provider errors, counted where steps, attempts and provider calls run
  (workers; the API's events route too), and how late the scheduler picks due jobs up. Each
  scheduler and worker serves its own ``/metrics`` on ``TUNECTL_METRICS_PORT``; a prefork
  worker aggregates its pool children with prometheus_client's multiprocess mode.

Importing this module fixes how prometheus_client stores values, so a prefork worker sets
``PROMETHEUS_MULTIPROC_DIR`` before anything imports it (``tunectl worker`` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from orchestrator.db.types import TZDateTime, utcnow

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

STEP_SECONDS = Histogram(
    "tunectl_step_duration_seconds", "Time one step took, from take-up to its outcome written.",
    ["step", "provider", "outcome"], buckets=_SECONDS)
PROVIDER_ERRORS = Counter(
    "tunectl_provider_errors_total",
    "Provider calls that failed, by operation and the error class they were classified as "
    "(counted where every call passes, whether the caller handled the error or not).",
    ["provider", "operation", "error"])
PICKUP_LAG = Histogram(
    "tunectl_scheduler_pickup_lag_seconds",
    "How late each claimed job was picked up: claim time minus when it became due "
    "(its next_run_at; for a rescued job, its lease expiry).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600))
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "tunectl_webhook_attempt_duration_seconds",
    "Time one webhook attempt took, from signing to the answer (or the refusal, the timeout).",
    ["outcome"], buckets=_SECONDS)


def step_outcome(result: str) -> str:
    """The label of a step's result ("retry in 5s" → "retry"; a target state stays)."""
    return "retry" if result.startswith("retry") else result


class DatabaseCollector(Collector):
    """Fleet-wide figures, read from the database on each scrape (a few aggregate queries,
    served by the tables' indexes and the dashboard views)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        jobs = GaugeMetricFamily("tunectl_jobs", "Jobs by project, provider and state.",
                                 labels=["project", "provider", "state"])
        transitions = CounterMetricFamily(
            "tunectl_job_transitions", "State changes recorded, by provider and move.",
            labels=["provider", "from_state", "to_state"])
        lag = GaugeMetricFamily(
            "tunectl_scheduler_lag_seconds",
            "How overdue the most overdue due job is that no scheduler has claimed yet "
            "(0: none waiting).")
        due = GaugeMetricFamily("tunectl_due_jobs", "Due jobs no scheduler has claimed yet.")
        deployments = GaugeMetricFamily("tunectl_deployments_live",
                                        "Deployments that exist at their provider.",
                                        labels=["provider", "state"])
        events = GaugeMetricFamily("tunectl_webhook_events",
                                   "Webhook events (one per transition and endpoint) by status.",
                                   labels=["status"])
        attempts = CounterMetricFamily("tunectl_webhook_attempts",
                                       "Webhook attempts recorded, by outcome.",
                                       labels=["outcome"])
        webhook_lag = GaugeMetricFamily(
            "tunectl_webhook_delivery_lag_seconds",
            "How overdue the most overdue webhook attempt is that no scheduler has claimed "
            "yet (0: none waiting).")
        disabled = GaugeMetricFamily("tunectl_webhook_endpoints_disabled",
                                     "Webhook endpoints disabled by a 410 Gone.")
        with self.engine.connect() as conn:
            for project, provider, state, n in conn.execute(sa.text(
                    "SELECT project, provider, state, jobs FROM jobs_by_state")):
                jobs.add_metric([project, provider, state], n)
            for provider, source, target, n in conn.execute(sa.text(
                    "SELECT j.provider, t.from_state, t.to_state, COUNT(*) "
                    "FROM job_transitions t JOIN jobs j ON j.id = t.job_id "
                    "GROUP BY j.provider, t.from_state, t.to_state")):
                transitions.add_metric([provider, source or "none", target], n)
            first, waiting = conn.execute(_oldest_due("jobs", "next_run_at"), {"now": now}).one()
            for provider, state, n in conn.execute(sa.text(
                    "SELECT provider, state, COUNT(*) FROM deployments_up "
                    "GROUP BY provider, state")):
                deployments.add_metric([provider, state], n)
            # Every status and outcome, 0 until the first: alerts and rate() see it start.
            by_status = dict.fromkeys(("pending", "delivered", "dead"), 0) | dict(
                conn.execute(sa.text("SELECT status, COUNT(*) FROM webhook_deliveries "
                                     "GROUP BY status")).all())
            by_outcome = dict.fromkeys(("delivered", "failed", "refused"), 0) | dict(
                conn.execute(sa.text("SELECT outcome, COUNT(*) FROM webhook_attempts "
                                     "GROUP BY outcome")).all())
            first_event, _ = conn.execute(_oldest_due(
                "webhook_deliveries", "next_attempt_at", "status = 'pending' AND "),
                {"now": now}).one()
            disabled.add_metric([], conn.execute(sa.text(
                "SELECT COUNT(*) FROM webhook_endpoints WHERE state = 'disabled'")).scalar_one())
        for status, n in by_status.items():
            events.add_metric([status], n)
        for outcome, n in by_outcome.items():
            attempts.add_metric([outcome], n)
        lag.add_metric([], _overdue_s(now, first))
        due.add_metric([], waiting)
        webhook_lag.add_metric([], _overdue_s(now, first_event))
        yield from (jobs, transitions, lag, due, deployments, events, attempts, webhook_lag,
                    disabled)


def _overdue_s(now: datetime, due: datetime | None) -> float:
    return max(0.0, (now - due).total_seconds()) if due else 0.0


def _oldest_due(table: str, due: str, where: str = "") -> sa.TextualSelect:
    """The oldest due time of ``table``'s unclaimed rows due by ``:now``, and how many."""
    return sa.text(f"SELECT MIN({due}), COUNT(*) FROM {table} "
                   f"WHERE {where}lease_owner IS NULL AND {due} <= :now").bindparams(
        sa.bindparam("now", type_=TZDateTime())).columns(
        sa.column("oldest", TZDateTime()), sa.column("n", sa.Integer()))


def exposition(engine: sa.Engine) -> bytes:
    """The API's /metrics: the fleet from the database, plus this process's own metrics
    (which, in ``tunectl up``, include its worker's and scheduler's)."""
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(DatabaseCollector(engine))
    return generate_latest(REGISTRY) + generate_latest(fleet)


def serve_process_metrics(port: int) -> None:
    """Serve this process's metrics on ``port`` (all interfaces) from a daemon thread,
    aggregating forked children when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, registry=registry)
    else:
        start_http_server(port)
