"""The CLI as a user runs it: one-line errors with exit status 2, JSON for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.config import get_settings
from tests.helpers import write_dataset

SPEC = """\
name: cli-job
provider: openai
base_model: gpt-4o-mini-2024-07-18
training_file: train.jsonl
idempotency_key: cli-1
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TUNECTL_", "OPENAI_"))}
    env = {**clean, "TUNECTL_DATA_DIR": str(tmp_path / "data"), "TUNECTL_LOG_LEVEL": "warning",
           "COLUMNS": "200"}
    for key in os.environ:
        if key.startswith(("TUNECTL_", "OPENAI_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def tunectl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process as its console script would; return (status, out, err)."""
    get_settings.cache_clear()
    sys.argv = ["tunectl", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def spec_file(tmp_path: Path, text: str = SPEC) -> Path:
    write_dataset(tmp_path / "train.jsonl")
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_the_console_script_refuses_an_unmigrated_database_with_the_fix(
        env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "jobs"], env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stderr.startswith("error: database sqlite:///")
    assert result.stderr.rstrip().endswith("run `tunectl db upgrade`")
    assert len(result.stderr.splitlines()) == 1


def test_submit_show_jobs_cancel_round_trip_in_json(env: dict[str, str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert tunectl(capsys, "db", "upgrade")[0] == 0
    spec = str(spec_file(tmp_path))

    first = json.loads(tunectl(capsys, "submit", spec, "--json")[1])
    again = json.loads(tunectl(capsys, "submit", spec, "--json")[1])
    listed = json.loads(tunectl(capsys, "jobs", "--json")[1])
    cancelled = tunectl(capsys, "cancel", first["id"])[1]
    shown = json.loads(tunectl(capsys, "show", first["id"], "--json")[1])

    assert (first["created"], again["created"], again["id"]) == (True, False, first["id"])
    assert [j["id"] for j in listed] == [first["id"]]
    assert cancelled.strip() == f"{first['id']}: cancelled"
    assert [(h["seq"], h["from"], h["to"]) for h in shown["history"]] == [
        (1, None, "queued"), (2, "queued", "cancelled")]
    assert shown["finished_at"] is not None


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(("show", "job_nope"), "error: no job 'job_nope'; `tunectl jobs` lists the jobs",
                 id="unknown-job"),
    pytest.param(("submit", "{spec}"), "error: {spec}:4: trainig_file: is not a known field "
                 "(check the spelling; see docs/job-spec.md); did you mean 'training_file'? "
                 "(and 1 more problem)", id="misspelt-field"),
    pytest.param(("submit", "{missing}"),
                 "error: {missing}: cannot read the spec (No such file or directory)",
                 id="missing-spec"),
])
def test_user_errors_are_one_line_with_exit_status_2(env: dict[str, str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     args: tuple[str, ...],
                                                     expected: str) -> None:
    tunectl(capsys, "db", "upgrade")
    spec = spec_file(tmp_path, SPEC.replace("training_file", "trainig_file"))
    names = {"spec": str(spec), "missing": str(tmp_path / "nope.yaml")}

    code, _, err = tunectl(capsys, *(a.format(**names) for a in args))
    assert code == 2
    assert err == expected.format(**names) + "\n"


def test_the_table_views_render(env: dict[str, str], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    tunectl(capsys, "db", "upgrade")
    job_id = json.loads(tunectl(capsys, "submit", str(spec_file(tmp_path)), "--json")[1])["id"]

    assert "cli-job" in tunectl(capsys, "jobs")[1]
    shown = tunectl(capsys, "show", job_id)[1]
    assert "queued" in shown and "submitted from" in shown


def test_show_says_why_a_failed_job_failed(env: dict[str, str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    tunectl(capsys, "db", "upgrade")
    job_id = json.loads(tunectl(capsys, "submit", str(spec_file(tmp_path)), "--json")[1])["id"]
    from orchestrator.db.engine import get_engine

    with get_engine(f"sqlite:///{tmp_path}/data/tunectl.db").begin() as conn:
        conn.exec_driver_sql("UPDATE jobs SET state = 'failed', failure_kind = 'provider_auth', "
                             "error = 'OpenAI refused the key', finished_at = updated_at, "
                             "next_run_at = NULL")

    shown = tunectl(capsys, "show", job_id)[1]
    assert "error: OpenAI refused the key" in shown and "failure kind: provider_auth" in shown
    assert json.loads(tunectl(capsys, "show", job_id, "--json")[1])["failure_kind"] == \
        "provider_auth"


def test_show_events_fetches_the_provider_jobs_events(env: dict[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.providers.openai.emulator import Scenario, create_app
    from tests.helpers import serve_in_thread

    tunectl(capsys, "db", "upgrade")
    job_id = json.loads(tunectl(capsys, "submit", str(spec_file(tmp_path)), "--json")[1])["id"]
    with serve_in_thread(create_app(Scenario(job_duration_s=60))) as url:
        import openai

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test-cli-123456")
        upload = client.files.create(file=("t.jsonl", (tmp_path / "train.jsonl").read_bytes()),
                                     purpose="fine-tune")
        remote = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18",
                                                training_file=upload.id)
        from orchestrator.db.engine import get_engine

        with get_engine(f"sqlite:///{tmp_path}/data/tunectl.db").begin() as conn:
            conn.exec_driver_sql(f"UPDATE jobs SET provider_job_id = '{remote.id}'")
        monkeypatch.setenv("TUNECTL_OPENAI_BASE_URL", f"{url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cli-123456")
        code, out, _ = tunectl(capsys, "show", job_id, "--events", "--json")
        client.close()

    assert code == 0
    messages = [e["message"] for e in json.loads(out)["provider_events"]]
    assert messages[0] == f"Created fine-tuning job: {remote.id}"


QWEN_SPEC = """\
name: qwen-job
provider: dashscope
base_model: qwen-turbo
training_file: train.jsonl
training_type: efficient_sft
hyperparameters: {n_epochs: 2, lora_rank: 8}
deploy: {capacity: 2, ttl_hours: 6}
"""


class TestDeploymentCommands:
    def test_deploy_and_undeploy_refuse_what_they_cannot_do_in_one_line(
            self, env: dict[str, str], tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        tunectl(capsys, "db", "upgrade")
        job_id = json.loads(tunectl(capsys, "submit", str(spec_file(tmp_path, QWEN_SPEC)),
                                    "--json")[1])["id"]

        deploy = tunectl(capsys, "deploy", job_id)
        undeploy = tunectl(capsys, "undeploy", job_id)
        missing = tunectl(capsys, "deploy", "job_nope")

        assert deploy[0] == 2 and deploy[2] == (
            f"error: job {job_id} is still running: it deploys when it succeeds if its spec "
            "has a deploy block; nothing to deploy yet\n")
        assert undeploy[0] == 2 and undeploy[2] == (
            f"error: job {job_id} has no deployment to delete; `tunectl deployments --all` "
            "lists past ones\n")
        assert missing[0] == 2 and "no job 'job_nope'" in missing[2]
        assert json.loads(tunectl(capsys, "deployments", "--json")[1]) == []

    def test_a_serving_deployment_is_listed_with_age_and_capacity_and_undeployed(
            self, env: dict[str, str], tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        from datetime import timedelta

        from orchestrator.db.engine import get_engine, session_scope
        from orchestrator.db.models import Deployment
        from orchestrator.db.types import utcnow

        tunectl(capsys, "db", "upgrade")
        job_id = json.loads(tunectl(capsys, "submit", str(spec_file(tmp_path, QWEN_SPEC)),
                                    "--json")[1])["id"]
        now = utcnow()
        engine = get_engine(f"sqlite:///{tmp_path}/data/tunectl.db")
        with engine.begin() as conn:  # as the deploy step leaves a job it deployed
            conn.exec_driver_sql(
                "UPDATE jobs SET state = 'succeeded', fine_tuned_model = 'qwen-turbo-ft-1', "
                "deployed_model = 'qwen-turbo-ft-1-ab12', next_run_at = NULL, "
                f"finished_at = '{now:%Y-%m-%d %H:%M:%S}'")
        with session_scope(engine) as session:
            session.add(Deployment(
                id="dep_1", job_id=job_id, provider="dashscope", account="a", capacity=2,
                model="qwen-turbo-ft-1", deployed_model="qwen-turbo-ft-1-ab12", state="running",
                ttl_hours=6, created_at=now - timedelta(hours=2, minutes=5),
                expires_at=now + timedelta(hours=3, minutes=55),
                next_run_at=now + timedelta(hours=3, minutes=55)))

        table = tunectl(capsys, "deployments")[1]
        listed = json.loads(tunectl(capsys, "deployments", "--json")[1])
        cancel = tunectl(capsys, "cancel", job_id)
        code, out, _ = tunectl(capsys, "undeploy", job_id)
        again = tunectl(capsys, "undeploy", job_id)[1]
        shown = json.loads(tunectl(capsys, "show", job_id, "--json")[1])
        redeploy = tunectl(capsys, "deploy", job_id)

        assert "qwen-turbo-ft-1-ab12" in table and "running" in table
        assert "2h05m" in table and "3h54m" in table
        assert [(d["deployed_model"], d["capacity"], d["state"]) for d in listed] == [
            ("qwen-turbo-ft-1-ab12", 2, "running")]
        assert 7490 < listed[0]["age_s"] < 7510
        assert cancel[0] == 2 and "already succeeded; there is nothing to cancel" in cancel[2]
        assert code == 0 and out.startswith(f"{job_id}: deployment qwen-turbo-ft-1-ab12 deleting")
        assert "already being deleted" in again
        assert shown["deployed_model"] == "qwen-turbo-ft-1-ab12"
        assert [d["state"] for d in shown["deployments"]] == ["deleting"]
        assert redeploy[0] == 2 and "already has deployment qwen-turbo-ft-1-ab12 (deleting)" in (
            redeploy[2])

    def test_a_dashscope_spec_error_is_one_line(self, env: dict[str, str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        tunectl(capsys, "db", "upgrade")
        bad = QWEN_SPEC.replace("training_type: efficient_sft", "training_type: dpo_lora")

        code, _, err = tunectl(capsys, "submit", str(spec_file(tmp_path, bad)))

        assert code == 2
        assert err == (f"error: {tmp_path / 'job.yaml'}: training_type: dpo_lora trains on "
                       "preference data; set method: dpo (the spec says sft)\n")


HOOKED_SPEC = SPEC + """\
notify:
  - url: https://hooks.example.com/tunectl
    secret: CLI_WEBHOOK_SECRET
    events: [all]
"""


class TestWebhookCommands:
    def test_deliveries_redeliver_endpoints_and_enable(
            self, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        from orchestrator.db.engine import get_engine
        from tests.helpers import SECRET

        monkeypatch.setenv("CLI_WEBHOOK_SECRET", SECRET)
        monkeypatch.setenv("TUNECTL_WEBHOOK_PROJECT_SECRETS", '{"default": ["CLI_WEBHOOK_SECRET"]}')
        tunectl(capsys, "db", "upgrade")
        job_id = json.loads(tunectl(capsys, "submit", str(spec_file(tmp_path, HOOKED_SPEC)),
                                    "--json")[1])["id"]
        tunectl(capsys, "cancel", job_id)
        listed = json.loads(tunectl(capsys, "webhooks", "deliveries", "--json")[1])
        assert [(d["event_type"], d["status"], d["endpoint"]) for d in listed] == [
            ("job.cancelled", "pending", "https://hooks.example.com/tunectl"),
            ("job.queued", "pending", "https://hooks.example.com/tunectl")]
        event = listed[0]["id"]
        # As the deliver step leaves an event it could not deliver: dead, endpoint disabled.
        with get_engine(f"sqlite:///{tmp_path}/data/tunectl.db").begin() as conn:
            conn.exec_driver_sql(
                "UPDATE webhook_deliveries SET status = 'dead', next_attempt_at = NULL, "
                f"dead_at = created_at, attempts = 8, last_status_code = 410 WHERE id = '{event}'")
            conn.exec_driver_sql(
                "UPDATE webhook_endpoints SET state = 'disabled', disabled_at = created_at, "
                "disabled_reason = '410 Gone'")

        one = json.loads(tunectl(capsys, "webhooks", "deliveries", event, "--json")[1])
        table = tunectl(capsys, "webhooks", "deliveries", "--job", job_id, "--status", "dead")[1]
        shown = tunectl(capsys, "webhooks", "deliveries", event)[1]
        endpoints_table = tunectl(capsys, "webhooks", "endpoints")[1]
        refused = tunectl(capsys, "webhooks", "redeliver", event)
        endpoints = json.loads(tunectl(capsys, "webhooks", "endpoints", "--json")[1])
        enabled = tunectl(capsys, "webhooks", "enable", "https://hooks.example.com/tunectl")[1]
        again = tunectl(capsys, "webhooks", "enable", "https://hooks.example.com/tunectl")[1]
        code, out, _ = tunectl(capsys, "webhooks", "redeliver", event)
        after = json.loads(tunectl(capsys, "webhooks", "deliveries", event, "--json")[1])

        assert one["payload"]["type"] == "job.cancelled"
        assert one["payload"]["data"]["job"]["id"] == job_id and one["attempt_log"] == []
        assert event in table and "job.queued" not in table
        assert f"{event} job.cancelled of job {job_id}" in shown and "dead" in shown
        assert "disabled" in endpoints_table and "410 Gone" in endpoints_table
        assert refused[0] == 2 and refused[2] == (
            "error: endpoint https://hooks.example.com/tunectl is disabled (410 Gone); "
            "`tunectl webhooks enable https://hooks.example.com/tunectl` first\n")
        assert [(e["url"], e["state"]) for e in endpoints] == [
            ("https://hooks.example.com/tunectl", "disabled")]
        assert enabled.strip() == "https://hooks.example.com/tunectl: enabled"
        assert again.strip() == "https://hooks.example.com/tunectl: already enabled"
        assert code == 0 and out.startswith(f"{event}: job.cancelled to https://hooks.example")
        assert (after["id"], after["status"], after["attempts"], after["attempt_limit"]) == (
            event, "pending", 8, 9)

    @pytest.mark.parametrize(("args", "expected"), [
        pytest.param(("webhooks", "deliveries", "msg_nope"),
                     "error: no webhook event 'msg_nope'; `tunectl webhooks deliveries` lists "
                     "them", id="unknown-event"),
        pytest.param(("webhooks", "redeliver", "msg_nope"),
                     "error: no webhook event 'msg_nope'; `tunectl webhooks deliveries` lists "
                     "them", id="redeliver-unknown"),
        pytest.param(("webhooks", "enable", "https://nowhere.example.com/"),
                     "error: no webhook endpoint 'https://nowhere.example.com/'; `tunectl "
                     "webhooks endpoints` lists them", id="unknown-endpoint"),
    ])
    def test_webhook_errors_are_one_line(self, env: dict[str, str],
                                         capsys: pytest.CaptureFixture[str],
                                         args: tuple[str, ...], expected: str) -> None:
        tunectl(capsys, "db", "upgrade")

        code, _, err = tunectl(capsys, *args)

        assert (code, err) == (2, expected + "\n")


class TestWorker:
    @pytest.mark.parametrize(("args", "queues"), [
        pytest.param([], "tunectl,tunectl.notify", id="both-by-default"),
        pytest.param(["--queues", "tunectl.notify"], "tunectl.notify", id="deliveries-only"),
    ])
    def test_it_consumes_the_steps_and_the_deliveries_queues(
            self, env: dict[str, str], capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch, args: list[str], queues: str) -> None:
        from workers.app import app as celery_app

        started: list[list[str]] = []
        monkeypatch.setattr(celery_app, "worker_main", started.append)
        tunectl(capsys, "db", "upgrade")

        assert tunectl(capsys, "worker", *args)[0] == 0

        [argv] = started
        assert argv[argv.index("--queues") + 1] == queues

    def test_an_unknown_queue_is_a_one_line_error(
            self, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
        assert tunectl(capsys, "worker", "--queues", "tunectl,webhooks") == (
            2, "", "error: --queues 'tunectl,webhooks': name one or both of tunectl, "
            "tunectl.notify\n")
