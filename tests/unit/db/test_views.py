"""The dashboard views return the right figures on a database filled through the real
lifecycle (runner, scheduler, emulators), on this stack's dialect; each figure is computed
again here in Python from the rows the lifecycle wrote."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from orchestrator.db.engine import session_scope
from orchestrator.db.models import Deployment, Job, JobTransition
from orchestrator.db.types import utcnow
from orchestrator.providers.dashscope.emulator import Scenario as DashScopeScenario
from orchestrator.providers.openai.emulator import Scenario
from orchestrator.states import TERMINAL
from tests.helpers import Clock, Pump, in_process_emulator, make_dashscope_spec, make_spec

DOCS = Path(__file__).resolve().parents[3] / "docs" / "dashboards.md"
VIEWS = {"jobs_by_state", "job_state_durations", "state_time_percentiles", "failure_reasons",
         "deployments_up", "spend_by_project", "webhook_delivery_health"}
#: The migrations that create views (webhook_delivery_health's figures are checked in
#: tests/unit/notify/test_delivery_health.py).
MIGRATIONS = ("0006_projects_and_views", "0008_webhook_delivery_health")


def rows(engine: sa.Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql))]


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@pytest.fixture
def fleet(settings: Any, engine: sa.Engine, tmp_path: Path) -> Pump:
    """Two projects' jobs through the lifecycle: OpenAI jobs that train for different
    times, two whose datasets are refused (for different reasons), one the provider fails,
    one cancelled, and a DashScope job whose deployment stays up."""
    clock = Clock()
    pump = Pump(settings, engine, clock)
    with in_process_emulator(clock, Scenario(job_duration_s=5),
                             DashScopeScenario(job_duration_s=5, deployment_duration_s=3)):
        for i, project in enumerate(["alpha", "alpha", "alpha", "beta"]):
            job = pump.submit(make_spec(tmp_path, name=f"ok-{i}"), project)
            pump.until_settled(job.id, step_s=1.0 + i)  # a different time in training each
        for name, line in [("bad", '{"messages": "not a list"}'), ("worse", "not json")]:
            broken = tmp_path / name
            broken.mkdir()
            (broken / "train.jsonl").write_text(line + "\n")
            bad = make_spec(tmp_path, name=name, training_file=broken / "train.jsonl")
            pump.until_settled(pump.submit(bad, "beta").id)
        doomed = make_spec(tmp_path, name="doomed", labels={"emulator_fail": "quota_exceeded"})
        pump.until_settled(pump.submit(doomed, "alpha").id)
        from orchestrator import jobs as job_ops

        cancelled = pump.submit(make_spec(tmp_path, name="cancelled"), "beta")
        job_ops.cancel(engine, cancelled.id, now=clock())
        deployed = pump.submit(make_dashscope_spec(tmp_path), "alpha")
        pump.until_settled(deployed.id)
    return pump


def test_every_view_is_documented_and_exists(engine: sa.Engine) -> None:
    """The migrations' views, the database's and docs/dashboards.md's are the same set."""
    from importlib import import_module

    created = {name for module in MIGRATIONS for name in import_module(
        f"orchestrator.db.migrations.versions.{module}").views(engine.dialect.name)}
    documented = set(re.findall(r"^### `(\w+)`", DOCS.read_text(), re.MULTILINE))
    in_db = set(sa.inspect(engine).get_view_names())

    assert created == VIEWS
    assert documented == VIEWS
    assert in_db >= VIEWS


def test_the_views_return_the_lifecycles_figures(fleet: Pump, engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        jobs = {j.id: j for j in session.exec(select(Job))}
        history = list(session.exec(select(JobTransition).order_by(
            col(JobTransition.job_id), col(JobTransition.seq))))
        deployments = list(session.exec(select(Deployment)))
    assert Counter(j.state for j in jobs.values()) == {"succeeded": 5, "failed": 3,
                                                       "cancelled": 1}

    by_state = {(r["project"], r["provider"], r["state"]): r["jobs"]
                for r in rows(engine, "SELECT * FROM jobs_by_state")}
    assert by_state == Counter((j.project, j.provider, j.state) for j in jobs.values())

    # Time in each state, from the history rows.
    spent: dict[tuple[str, str], float] = defaultdict(float)
    per_job: dict[str, list[JobTransition]] = defaultdict(list)
    for t in history:
        per_job[t.job_id].append(t)
    for job_id, ts in per_job.items():
        for before, after in pairwise(ts):
            if before.to_state not in TERMINAL:
                spent[(job_id, before.to_state)] += (after.at - before.at).total_seconds()
    durations = {(r["job_id"], r["state"]): r["seconds"]
                 for r in rows(engine, "SELECT * FROM job_state_durations")}
    assert durations.keys() == spent.keys()
    for key, seconds in spent.items():
        assert durations[key] == pytest.approx(seconds, abs=0.01), key
    assert spent[(next(j.id for j in jobs.values() if j.name == "ok-3"), "training")] > \
        spent[(next(j.id for j in jobs.values() if j.name == "ok-0"), "training")]

    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for (job_id, state), seconds in spent.items():
        groups[(jobs[job_id].provider, jobs[job_id].base_model, state)].append(seconds)
    percentiles = {(r["provider"], r["base_model"], r["state"]): r
                   for r in rows(engine, "SELECT * FROM state_time_percentiles")}
    assert percentiles.keys() == groups.keys()
    for key, values in groups.items():
        row = percentiles[key]
        assert row["jobs"] == len(values)
        assert row["p50_s"] == pytest.approx(nearest_rank(values, 0.5), abs=0.01), key
        assert row["p95_s"] == pytest.approx(nearest_rank(values, 0.95), abs=0.01), key
    training = percentiles[("openai", "gpt-4o-mini-2024-07-18", "training")]
    assert training["jobs"] == 5 and training["p95_s"] > training["p50_s"]

    # Failures group by kind, though each job's error is its own text.
    failed = sorted((j for j in jobs.values() if j.state == "failed"),
                    key=lambda j: (j.finished_at, j.id))
    kinds: dict[tuple[str, str, str | None], list[Job]] = defaultdict(list)
    for j in failed:
        kinds[(j.project, j.provider, j.failure_kind)].append(j)
    reasons = {(r["project"], r["provider"], r["failure_kind"]): r
               for r in rows(engine, "SELECT * FROM failure_reasons")}
    assert reasons.keys() == kinds.keys() == {("beta", "openai", "dataset"),
                                              ("alpha", "openai", "provider_failed_job")}
    for key, group in kinds.items():
        assert reasons[key]["jobs"] == len(group)
        assert reasons[key]["example_reason"] == group[-1].error  # the newest one's
    datasets = kinds[("beta", "openai", "dataset")]
    assert len({j.error for j in datasets}) == 2 and "training_file" in str(datasets[0].error)

    live = [d for d in deployments if d.state in ("creating", "deploying", "running",
                                                  "deleting")]
    up = rows(engine, "SELECT * FROM deployments_up")
    assert [(r["id"], r["project"], r["state"], r["capacity"]) for r in up] == [
        (d.id, "alpha", "running", 2) for d in live]
    age = (utcnow() - live[0].created_at).total_seconds()
    assert up[0]["age_s"] == pytest.approx(age, abs=5)

    spend: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for j in jobs.values():
        if j.provider_job_id is not None:
            spend[(j.project, j.provider)].append(j)
    found = {(r["project"], r["provider"]): r
             for r in rows(engine, "SELECT * FROM spend_by_project")}
    assert found.keys() == spend.keys()
    for key, trained in spend.items():
        costs = [(j.dataset or {}).get("estimated_cost_usd") for j in trained]
        assert found[key]["jobs_trained"] == len(trained)
        assert found[key]["estimated_usd"] == pytest.approx(sum(c or 0 for c in costs))
        assert found[key]["jobs_unpriced"] == sum(c is None for c in costs)
    assert found[("alpha", "openai")]["estimated_usd"] > 0
