"""The outbox: which events a transition writes, for whom, in its own transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from sqlmodel import select

from orchestrator import jobs as job_ops
from orchestrator.blobs import BlobStore
from orchestrator.config import Settings, get_settings
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job, WebhookDelivery
from orchestrator.db.transition import insert_job, transition
from orchestrator.db.types import new_id
from orchestrator.errors import SpecError, StaleTransition
from orchestrator.notify.outbox import Wake, endpoint_id
from orchestrator.states import FailureKind, State
from tests.helpers import OTHER_SECRET, SECRET, SECRET_NAME, make_spec

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SCHEMA = json.loads((Path(__file__).parents[3] / "docs" / "webhook-payload.schema.json")
                    .read_text())
HOOK = "https://hooks.example.com/tunectl"
OPS = "https://ops.example.com/tunectl"
#: training → finalizing → succeeded, after the moves into training.
TO_TRAINING = [State.VALIDATING, State.UPLOADING, State.SUBMITTING, State.TRAINING]


def new_job(engine: sa.Engine, notify: list[dict[str, Any]] | None = None,
            **fields: Any) -> str:
    spec = {"notify": notify} if notify is not None else {}
    job = Job(id=new_id("job"), name="hooked", provider="openai", base_model="gpt-4o-mini",
              method="sft", spec=spec, spec_sha256="0" * 64, training_blob="0" * 64,
              labels={"team": "support"}, **fields)
    with session_scope(engine) as session:
        insert_job(session, job, reason="test", now=NOW)
    return job.id


def walk(engine: sa.Engine, job_id: str, states: list[State], **last: Any) -> int:
    """Move the job through ``states`` (from where it is); the last move gets ``last``."""
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        source, version = State(job.state), job.version
    for i, target in enumerate(states):
        fields = last if i == len(states) - 1 else {}
        with session_scope(engine) as session:
            version = transition(session, job_id, source=source, target=target,
                                 version=version, reason=f"to {target}",
                                 now=NOW + timedelta(seconds=version), **fields)
        source = target
    return version


def deliveries(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT d.*, e.url FROM webhook_deliveries d "
            "JOIN webhook_endpoints e ON e.id = d.endpoint_id ORDER BY d.seq, e.url")))


def target(events: list[str] | None = None, url: str = HOOK) -> dict[str, Any]:
    return {"url": url, "secret": SECRET_NAME,
            "events": events or ["succeeded", "failed", "cancelled"]}


@pytest.fixture(autouse=True)
def _settings(configure: Callable[..., None]) -> None:
    configure()


class TestWhatIsWritten:
    def test_a_succeeded_job_writes_one_event_for_its_endpoint(self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target()])
        walk(engine, job_id, TO_TRAINING)
        assert deliveries(engine) == []  # the default events skip intermediate moves

        seq = walk(engine, job_id, [State.FINALIZING, State.SUCCEEDED],
                   fine_tuned_model="ft:gpt-4o-mini:emulator:x:1",
                   result={"model_ref": {"provider": "openai",
                                         "model": "ft:gpt-4o-mini:emulator:x:1"}})

        [row] = deliveries(engine)
        assert (row.job_id, row.seq, row.event_type, row.url) == (job_id, seq, "job.succeeded",
                                                                 HOOK)
        assert (row.status, row.attempts, row.secret_name, row.source) == (
            "pending", 0, SECRET_NAME, "spec")
        assert row.id.startswith("msg_") and row.endpoint_id == endpoint_id(HOOK)

    def test_the_payload_follows_the_documented_schema(self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target()], project="support", dataset={
            "estimated_cost_usd": 0.42, "training": {"billed_tokens": 1234}})
        walk(engine, job_id, [*TO_TRAINING, State.FINALIZING, State.SUCCEEDED],
             fine_tuned_model="ft:m", provider_status="succeeded",
             result={"model_ref": {"provider": "openai", "model": "ft:m"}})

        payload = json.loads(deliveries(engine)[0].payload)
        jsonschema.validate(payload, SCHEMA, format_checker=jsonschema.FormatChecker())
        job = payload["data"]["job"]
        assert payload["type"] == "job.succeeded"
        assert (job["id"], job["project"], job["name"], job["provider"], job["state"]) == (
            job_id, "support", "hooked", "openai", "succeeded")
        assert job["model_ref"] == {"provider": "openai", "model": "ft:m"}
        assert job["cost_estimate"] == {"usd": 0.42, "billed_tokens": 1234}
        assert job["labels"] == {"team": "support"}
        assert job["timings"]["duration_s"] == 6.0  # finished 6 transitions after creation
        assert payload["data"]["transition"]["from"] == "finalizing"

    def test_a_failed_jobs_payload_says_why_as_its_failure_kind(self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target()])
        walk(engine, job_id, [State.VALIDATING, State.FAILED], error="bad dataset",
             failure_kind="dataset")

        payload = json.loads(deliveries(engine)[0].payload)
        jsonschema.validate(payload, SCHEMA)
        assert (payload["type"], payload["data"]["job"]["failure_kind"]) == ("job.failed",
                                                                             "dataset")
        kinds = SCHEMA["$defs"]["job"]["properties"]["failure_kind"]["enum"]
        assert kinds == [None, *(k.value for k in FailureKind)]

    def test_every_transition_for_a_target_that_asks_for_all(self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target(["all"])])
        walk(engine, job_id, [*TO_TRAINING, State.TRAINING, State.CANCELLING, State.CANCELLED])

        rows = deliveries(engine)
        assert [r.event_type for r in rows] == [
            "job.queued", "job.validating", "job.uploading", "job.submitting", "job.training",
            "job.training", "job.cancelling", "job.cancelled"]
        assert [r.seq for r in rows] == list(range(1, 9))
        for row in rows:
            jsonschema.validate(json.loads(row.payload), SCHEMA)

    @pytest.mark.parametrize(("events", "expected"), [
        pytest.param(["succeeded"], "job.succeeded", id="succeeded-only"),
        pytest.param(["deployed"], "job.deployed", id="deployed-only"),
        pytest.param(["succeeded", "deployed"], "job.deployed", id="both-one-event"),
        pytest.param(["failed"], None, id="neither"),
    ])
    def test_a_deployment_serving_is_one_event_per_endpoint(
            self, engine: sa.Engine, events: list[str], expected: str | None) -> None:
        job_id = new_job(engine, [target(events)])
        walk(engine, job_id, [*TO_TRAINING, State.FINALIZING, State.DEPLOYING])

        walk(engine, job_id, [State.SUCCEEDED], deployed_model="qwen-turbo-ft-dep")

        assert [r.event_type for r in deliveries(engine)] == ([expected] if expected else [])

    def test_an_undeployed_deployment_is_its_own_event(self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target(["undeployed"])])
        version = walk(engine, job_id, [*TO_TRAINING, State.FINALIZING, State.SUCCEEDED])

        with session_scope(engine) as session:
            transition(session, job_id, source=State.SUCCEEDED, target=State.SUCCEEDED,
                       version=version, reason="deployment deleted: ttl", now=NOW,
                       data={"event": "undeployed", "deployment_id": "dep_1"})

        [row] = deliveries(engine)
        assert row.event_type == "job.undeployed"
        assert json.loads(row.payload)["data"]["transition"]["data"]["deployment_id"] == "dep_1"

    @pytest.mark.parametrize(("events", "expected"), [
        pytest.param(["succeeded"], "job.succeeded", id="succeeded"),
        pytest.param(["undeployed"], "job.undeployed", id="undeployed"),
        pytest.param(["succeeded", "undeployed"], "job.succeeded", id="both-one-event"),
    ])
    def test_an_undeploy_while_first_deploying_is_success_and_undeployed(
            self, engine: sa.Engine, events: list[str], expected: str) -> None:
        job_id = new_job(engine, [target(events)])
        walk(engine, job_id, [*TO_TRAINING, State.FINALIZING, State.DEPLOYING])

        walk(engine, job_id, [State.SUCCEEDED], deployed_model=None,
             data={"event": "undeployed", "deployment_id": "dep_1"})

        assert [r.event_type for r in deliveries(engine)] == [expected]

    @pytest.mark.parametrize(("serves", "expected"), [
        pytest.param(True, ["job.deployed"], id="deployed-again"),
        pytest.param(False, ["job.undeployed"], id="undeployed-before-it-served"),
    ])
    def test_a_redeploy_of_a_succeeded_job_never_succeeds_twice(
            self, engine: sa.Engine, serves: bool, expected: list[str]) -> None:
        """`tunectl deploy` re-opens a succeeded job (succeeded → deploying): its end is
        job.deployed or job.undeployed, not a second job.succeeded under a new id."""
        job_id = new_job(engine, [target(["succeeded"], url=HOOK),
                                  target(["deployed", "undeployed"], url=OPS)])
        walk(engine, job_id, [*TO_TRAINING, State.FINALIZING, State.SUCCEEDED],
             fine_tuned_model="ft:m")
        walk(engine, job_id, [State.DEPLOYING])
        last = {"deployed_model": "dep-model"} if serves else {
            "deployed_model": None, "data": {"event": "undeployed", "deployment_id": "dep_1"}}

        walk(engine, job_id, [State.SUCCEEDED], **last)

        got = [(r.url, r.event_type) for r in deliveries(engine)]
        assert got == [(HOOK, "job.succeeded"), *[(OPS, kind) for kind in expected]]

    def test_configured_endpoints_filter_by_event_and_join_the_specs(
            self, engine: sa.Engine, configure: Callable[..., None]) -> None:
        configure(TUNECTL_WEBHOOKS=[
            {"url": "https://ops.example.com/all", "secret": SECRET_NAME, "events": ["all"]},
            {"url": "https://ops.example.com/failures", "events": ["failed"]},
            # The spec names this one too: still one event per endpoint, the operator's.
            {"url": HOOK, "secret": "OTHER_NAME", "events": ["all"]},
        ])
        job_id = new_job(engine, [target()])
        walk(engine, job_id, [State.VALIDATING, State.FAILED], error="bad dataset",
             failure_kind="dataset")

        got = [(r.url, r.event_type, r.source, r.secret_name) for r in deliveries(engine)]
        assert got == [
            (HOOK, "job.queued", "config", "OTHER_NAME"),
            ("https://ops.example.com/all", "job.queued", "config", SECRET_NAME),
            (HOOK, "job.validating", "config", "OTHER_NAME"),
            ("https://ops.example.com/all", "job.validating", "config", SECRET_NAME),
            (HOOK, "job.failed", "config", "OTHER_NAME"),  # the operator's, not the spec's
            ("https://ops.example.com/all", "job.failed", "config", SECRET_NAME),
            ("https://ops.example.com/failures", "job.failed", "config",
             "TUNECTL_WEBHOOK_SECRET"),
        ]


    def test_a_spec_naming_an_operators_endpoint_changes_nothing_it_gets(
            self, engine: sa.Engine, configure: Callable[..., None]) -> None:
        """Not its secret, nor its filter: the operator's receiver would refuse the
        project's signature, and the events it filters out are none of the project's."""
        configure(TUNECTL_WEBHOOKS=[{"url": OPS, "secret": "OTHER_NAME",
                                     "events": ["failed"]}])
        job_id = new_job(engine, [target(["all"], url=OPS), target(["all"])])
        walk(engine, job_id, [State.VALIDATING, State.FAILED], error="bad dataset",
             failure_kind="dataset")

        got = [(r.url, r.event_type, r.source, r.secret_name) for r in deliveries(engine)]
        assert [g for g in got if g[0] == OPS] == [(OPS, "job.failed", "config", "OTHER_NAME")]
        assert [g[1] for g in got if g[0] == HOOK] == ["job.queued", "job.validating",
                                                       "job.failed"]

    def test_one_endpoint_however_its_url_is_spelled(
            self, engine: sa.Engine, configure: Callable[..., None]) -> None:
        configure(TUNECTL_WEBHOOKS=[{"url": "https://Hooks.Example.COM:443/tunectl",
                                     "secret": SECRET_NAME, "events": ["all"]}])
        job_id = new_job(engine, [target(["all"], url="HTTPS://hooks.example.com/tunectl")])
        walk(engine, job_id, [State.CANCELLED])

        assert [(r.url, r.source) for r in deliveries(engine)] == [(HOOK, "config")] * 2
        assert endpoint_id("https://HOOKS.example.com:443/tunectl") == endpoint_id(HOOK)
        assert endpoint_id("https://hooks.example.com/Tunectl") != endpoint_id(HOOK)

    def test_the_schedules_first_delay_is_the_first_attempts(
            self, engine: sa.Engine, configure: Callable[..., None]) -> None:
        configure(TUNECTL_WEBHOOK_RETRY_SCHEDULE_S=[30, 60])
        job_id = new_job(engine, [target(["all"])])
        wake: list[Wake] = []

        with session_scope(engine) as session:
            transition(session, job_id, source=State.QUEUED, target=State.CANCELLED,
                       version=1, reason="x", now=NOW, wake=wake)

        assert wake == []  # not due yet: nothing to send right after the commit
        with session_scope(engine) as session:
            rows = session.exec(select(WebhookDelivery)).all()
            assert len(rows) == 2
            for row in rows:
                assert row.lease_owner is None and row.next_attempt_at is not None
                assert 24 <= (row.next_attempt_at - row.created_at).total_seconds() <= 36


class TestSameTransaction:
    def test_a_rolled_back_transition_leaves_no_event(self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target(["all"])])

        with pytest.raises(RuntimeError), session_scope(engine) as session:
            transition(session, job_id, source=State.QUEUED, target=State.CANCELLED,
                       version=1, reason="x", now=NOW)
            raise RuntimeError("crash before commit")

        assert [r.event_type for r in deliveries(engine)] == ["job.queued"]

    def test_a_stale_transition_writes_no_event(self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target(["all"])])
        walk(engine, job_id, [State.CANCELLED])

        with pytest.raises(StaleTransition), session_scope(engine) as session:
            transition(session, job_id, source=State.QUEUED, target=State.VALIDATING,
                       version=1, reason="late", now=NOW)

        assert [r.event_type for r in deliveries(engine)] == ["job.queued", "job.cancelled"]

    def test_the_database_holds_the_secrets_name_never_the_secret(
            self, engine: sa.Engine) -> None:
        job_id = new_job(engine, [target(["all"])])
        walk(engine, job_id, [State.CANCELLED])

        with engine.connect() as conn:
            for table in ("jobs", "job_transitions", "webhook_deliveries", "webhook_endpoints"):
                dump = repr(conn.exec_driver_sql(f"SELECT * FROM {table}").all())
                assert SECRET not in dump and SECRET.removeprefix("whsec_") not in dump
        assert {r.secret_name for r in deliveries(engine)} == {SECRET_NAME}


def not_set_for(name: str, project: str = "default") -> str:
    """The one line a spec gets for a secret name its project may not use or that is not
    set: the same either way."""
    return (f"s.yaml: notify.0.secret: webhook secret {name} is not set for project "
            f"{project}; the operator sets it (or {name}_FILE) and lists it for the project in "
            "TUNECTL_WEBHOOK_PROJECT_SECRETS")


class TestCheckedAtSubmit:
    @pytest.fixture(autouse=True)
    def _environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A provider key, OpenAI's webhook secret and another project's secret are all set
        in the environment (the last two hold real whsec_ values)."""
        monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-webhook-secret-123456")
        monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", OTHER_SECRET)
        monkeypatch.setenv("TEAM_A_SECRET", OTHER_SECRET)
        monkeypatch.setenv("TUNECTL_WEBHOOK_SECRET", OTHER_SECRET)

    def submit(self, settings: Settings, engine: sa.Engine, tmp_path: Path,
               notify: dict[str, Any], project: str = "default") -> job_ops.Submitted:
        return job_ops.submit(engine, BlobStore(settings.blob_dir),
                              make_spec(tmp_path, notify=[notify]), source="s.yaml",
                              project=project)

    @pytest.mark.parametrize(("notify", "expected"), [
        pytest.param({"url": "http://169.254.169.254/latest"},
                     "s.yaml: notify.0.url: 'http://169.254.169.254/latest' points at "
                     "169.254.169.254 (a cloud metadata service); webhooks go only to public "
                     "addresses (see TUNECTL_WEBHOOK_ALLOW_NETWORKS)", id="metadata-url"),
        pytest.param({"url": HOOK, "secret": "NOBODY_SET_THIS"}, not_set_for("NOBODY_SET_THIS"),
                     id="secret-not-set"),
        pytest.param({"url": HOOK, "secret": "TEAM_A_SECRET"}, not_set_for("TEAM_A_SECRET"),
                     id="another-projects-secret"),
        pytest.param({"url": HOOK, "secret": "OPENAI_WEBHOOK_SECRET"},
                     not_set_for("OPENAI_WEBHOOK_SECRET"), id="openai-webhook-secret"),
        pytest.param({"url": HOOK, "secret": "OPENAI_API_KEY"}, not_set_for("OPENAI_API_KEY"),
                     id="provider-credential"),
        pytest.param({"url": HOOK}, not_set_for("TUNECTL_WEBHOOK_SECRET"),
                     id="default-secret-not-given-to-the-project"),
    ])
    def test_a_target_that_could_never_be_delivered_is_a_spec_error(
            self, settings: Settings, engine: sa.Engine, tmp_path: Path,
            notify: dict[str, Any], expected: str) -> None:
        with pytest.raises(SpecError) as raised:
            self.submit(settings, engine, tmp_path, notify)

        assert str(raised.value) == expected
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 0

    def test_each_project_names_only_the_secrets_it_was_given(
            self, settings: Settings, engine: sa.Engine, tmp_path: Path,
            configure: Callable[..., None]) -> None:
        configure(TUNECTL_WEBHOOK_PROJECT_SECRETS={
            "team-a": ["TEAM_A_SECRET"], "team-b": [SECRET_NAME, "TUNECTL_WEBHOOK_SECRET"]})

        assert self.submit(settings, engine, tmp_path, target(), project="team-b").created
        assert self.submit(settings, engine, tmp_path, {"url": HOOK}, project="team-b").created
        for name in ("TEAM_A_SECRET", None):
            with pytest.raises(SpecError) as raised:
                self.submit(settings, engine, tmp_path, {"url": HOOK, "secret": name},
                            project="team-a" if name is None else "team-b")
            assert str(raised.value) == not_set_for(name or "TUNECTL_WEBHOOK_SECRET",
                                                    "team-a" if name is None else "team-b")

    @pytest.mark.parametrize("setting", [
        pytest.param({"TUNECTL_WEBHOOK_PROJECT_SECRETS": {"default": ["OPENAI_WEBHOOK_SECRET"]}},
                     id="a-projects-list"),
        pytest.param({"TUNECTL_WEBHOOKS": [{"url": HOOK, "secret": "openai_api_key"}]},
                     id="a-configured-endpoint"),
    ])
    def test_the_operator_cannot_make_a_credential_a_signing_secret(
            self, configure: Callable[..., None], setting: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match="holds a tunectl setting or a provider credential, "
                           "never a webhook signing secret"):
            configure(**setting)
            get_settings()
