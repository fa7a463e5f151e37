"""DashScope jobs that deploy, through the real runner, scheduler and DashScope emulator:
the deploying state, deployment rows and their history, TTL expiry, undeploy, failures,
and "exactly one deployment" across crashes and overlapping runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from orchestrator import deployments as deployment_ops
from orchestrator import jobs as job_ops
from orchestrator.config import Settings
from orchestrator.db import deployments as rows
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Deployment
from orchestrator.errors import ProviderUnavailable, UserError
from orchestrator.providers.base import DeploymentRequest, RemoteDeployment
from orchestrator.providers.dashscope.adapter import DashScopeClient
from orchestrator.providers.dashscope.emulator import Scenario
from tests.helpers import Clock, Pump, in_process_emulator, make_dashscope_spec

ADMIN = "/dashscope/_emulator"
LIFECYCLE = ["queued", "validating", "uploading", "submitting", "training", "finalizing",
             "deploying", "succeeded"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pump(settings: Settings, engine: sa.Engine, clock: Clock) -> Pump:
    return Pump(settings, engine, clock)


def distinct_states(pump: Pump, job_id: str) -> list[str]:
    visited = [t.to_state for t in pump.history(job_id)]
    return [s for i, s in enumerate(visited) if i == 0 or s != visited[i - 1]]


def stats(emulator: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = emulator.get(f"{ADMIN}/stats").json()
    return body


def deployment_of(pump: Pump, job_id: str) -> list[Deployment]:
    with session_scope(pump.engine) as session:
        return rows.for_job(session, job_id)


def deployment_history(pump: Pump, deployment_id: str) -> list[tuple[str, str]]:
    with session_scope(pump.engine) as session:
        return [(t.to_state, t.reason or "") for t in rows.history(session, deployment_id)]


def scenario(**fields: Any) -> Scenario:
    return Scenario.model_validate({"job_duration_s": 10, "deployment_duration_s": 10,
                                    **fields})


def settle_deployments(pump: Pump, rounds: int = 5) -> None:
    """Let the scheduler send (and the pump run) whatever deployments are due."""
    for _ in range(rounds):
        pump.scheduler().tick()
        pump.run_sent()
        pump.clock.advance(1)


class TestAutoDeploy:
    def test_a_qwen_turbo_sft_job_deploys_and_succeeds_with_the_deployed_model(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as emulator:
            job = pump.submit(make_dashscope_spec(tmp_path))
            done = pump.until_settled(job.id)
            remote_job = emulator.get(f"/dashscope/api/v1/fine-tunes/{done.provider_job_id}"
                                      ).json()["output"]
            remote = emulator.get(f"/dashscope/api/v1/deployments/{done.deployed_model}"
                                  ).json()["output"]
            counters = stats(emulator)

        assert done.state == "succeeded"
        assert distinct_states(pump, job.id) == LIFECYCLE
        assert done.fine_tuned_model == remote_job["finetuned_output"]
        assert done.deployed_model == remote["deployed_model"]
        assert remote["model_name"] == done.fine_tuned_model and remote["status"] == "RUNNING"
        assert remote["capacity"] == 2
        assert done.result["model_ref"] == {"provider": "dashscope",
                                            "model": done.deployed_model}
        assert (remote_job["job_name"], remote_job["training_type"]) == (job.id, "sft")
        assert counters["deployments_created"] == {done.fine_tuned_model: 1}
        [deployment] = deployment_of(pump, job.id)
        assert (deployment.state, deployment.deployed_model) == ("running", done.deployed_model)
        assert deployment.expires_at is not None
        assert (deployment.expires_at - deployment.created_at).total_seconds() == 3600
        moves = [s for s, _ in deployment_history(pump, deployment.id)]
        assert (moves[0], moves[-1]) == ("creating", "running")
        statuses = [t.provider_status for t in pump.history(job.id)
                    if (t.from_state, t.to_state) == ("deploying", "deploying")]
        assert "DEPLOYING" in statuses

    def test_a_job_without_a_deploy_block_succeeds_without_deploying(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(
                tmp_path, deploy=None, training_type="efficient_sft",
                hyperparameters={"lora_rank": 16})).id)
            remote = emulator.get(f"/dashscope/api/v1/fine-tunes/{done.provider_job_id}"
                                  ).json()["output"]

        assert done.state == "succeeded" and done.deployed_model is None
        assert "deploying" not in distinct_states(pump, done.id)
        assert remote["training_type"] == "efficient_sft"
        assert remote["hyper_parameters"]["lora_rank"] == 16

    def test_a_deploying_job_cannot_be_cancelled_but_points_at_undeploy(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario(deployment_duration_s=600)):
            job = pump.submit(make_dashscope_spec(tmp_path))
            for _ in range(30):
                if pump.job(job.id).state == "deploying":
                    break
                pump.scheduler().tick()
                pump.run_sent()
                clock.advance(1)
            with pytest.raises(UserError, match="tunectl undeploy"):
                job_ops.cancel(pump.engine, job.id, now=clock())


def run_until_deploying_with_a_deployment(pump: Pump, job_id: str) -> Deployment:
    for _ in range(60):
        found = deployment_of(pump, job_id)
        if found and found[-1].deployed_model:
            return found[-1]
        pump.scheduler().tick()
        pump.run_sent()
        pump.clock.advance(1)
    raise AssertionError("no deployment was created")


class TestLifetime:
    def test_an_expired_ttl_deletes_the_deployment_and_the_job_history_says_so(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
            deployed = done.deployed_model
            settle_deployments(pump)
            assert stats(emulator)["deployments_deleted"] == 0  # not expired yet
            clock.advance(3600)
            settle_deployments(pump)
            gone = emulator.get(f"/dashscope/api/v1/deployments/{deployed}")
            counters = stats(emulator)

        assert gone.status_code == 404 and gone.json()["code"] == "NotFound"
        assert counters["deployments_deleted"] == 1 and counters["deployments"] == 0
        job = pump.job(done.id)
        last = pump.history(done.id)[-1]
        assert (last.from_state, last.to_state) == ("succeeded", "succeeded")
        assert last.reason == (f"deployment {deployed} of {done.fine_tuned_model} deleted: "
                               "its ttl of 1 h expired")
        assert last.data["event"] == "undeployed" and last.data["deployed_model"] == deployed
        assert job.deployed_model is None and job.finished_at == done.finished_at
        [deployment] = deployment_of(pump, done.id)
        assert deployment.state == "deleted" and deployment.finished_at is not None

    def test_the_global_default_ttl_applies_when_the_spec_sets_none(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        pump.settings.deploy_ttl_hours = 2
        with in_process_emulator(clock, dashscope=scenario()):
            done = pump.until_settled(pump.submit(make_dashscope_spec(
                tmp_path, deploy={"capacity": 1})).id)
        [deployment] = deployment_of(pump, done.id)

        assert deployment.ttl_hours == 2
        assert deployment.expires_at is not None
        assert (deployment.expires_at - deployment.created_at).total_seconds() == 7200

    def test_undeploy_deletes_a_serving_deployment(self, pump: Pump, clock: Clock,
                                                   tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
            asked = deployment_ops.undeploy(pump.engine, done.id, now=clock())
            again = deployment_ops.undeploy(pump.engine, done.id, now=clock())
            settle_deployments(pump)
            counters = stats(emulator)

        assert asked.changed and not again.changed
        assert counters["deployments_deleted"] == 1
        assert pump.history(done.id)[-1].reason == (
            f"deployment {done.deployed_model} of {done.fine_tuned_model} deleted: "
            "undeploy requested")
        with pytest.raises(UserError, match="has no deployment to delete"):
            deployment_ops.undeploy(pump.engine, done.id, now=clock())

    def test_undeploy_while_deploying_deletes_it_and_keeps_the_tuned_model(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario(deployment_duration_s=600)) as em:
            job = pump.submit(make_dashscope_spec(tmp_path))
            run_until_deploying_with_a_deployment(pump, job.id)
            deployment_ops.undeploy(pump.engine, job.id, now=clock())
            done = pump.until_settled(job.id)
            counters = stats(em)

        assert done.state == "succeeded" and done.deployed_model is None
        assert done.fine_tuned_model is not None
        assert counters["deployments_deleted"] == 1
        assert (pump.history(job.id)[-1].reason or "").startswith(
            "undeploy requested while deploying: deployment ")


class TestFailures:
    def test_a_failed_deployment_fails_the_job_and_tunectl_deploy_retries_it(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        failing = scenario(fail_deployments={"code": "ResourceExhausted",
                                             "message": "no GPU capacity in cn-beijing"})
        with in_process_emulator(clock, dashscope=failing) as emulator:
            failed = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
            after_failure = stats(emulator)
            emulator.put(f"{ADMIN}/scenario", json=scenario().model_dump())
            reopened = deployment_ops.deploy(pump.engine, failed.id, capacity=3, now=clock())
            done = pump.until_settled(failed.id)
            remote = emulator.get(f"/dashscope/api/v1/deployments/{done.deployed_model}"
                                  ).json()["output"]

        assert failed.state == "failed" and failed.fine_tuned_model is not None
        assert failed.failure_kind == "deployment_failed"
        assert failed.error is not None
        assert "ResourceExhausted: no GPU capacity in cn-beijing" in failed.error
        assert f"retry with `tunectl deploy {failed.id}`" in failed.error
        assert after_failure["deployments_deleted"] == 1
        assert set(after_failure["deployments_by_status"]) <= {"DELETING"}
        assert reopened.state == "deploying" and reopened.finished_at is None
        assert done.state == "succeeded" and done.error is None
        assert done.fine_tuned_model == failed.fine_tuned_model
        assert remote["capacity"] == 3
        assert distinct_states(pump, failed.id)[-4:] == ["deploying", "failed", "deploying",
                                                         "succeeded"]
        assert [d.state for d in deployment_of(pump, failed.id)] == ["failed", "running"]

    def test_a_deployment_that_does_not_serve_in_time_is_deleted_and_fails_the_job(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        pump.settings.deploy_timeout_s = 30
        with in_process_emulator(clock, dashscope=scenario(deployment_duration_s=3600)) as em:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
            counters = stats(em)

        assert done.state == "failed"
        assert done.failure_kind == "deployment_failed"
        assert done.error is not None and "did not serve within 30 s" in done.error
        assert counters["deployments_deleted"] == 1
        assert set(counters["deployments_by_status"]) <= {"DELETING"}

    def test_throttling_and_server_errors_delay_the_job_but_do_not_fail_it(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        noisy = scenario(throttle={"count": 3, "routes": "^/api/v1/deployments"},
                         server_errors={"count": 3, "status": 503,
                                        "routes": "^/api/v1/(files|fine-tunes)"})
        with in_process_emulator(clock, dashscope=noisy) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id,
                                      rounds=400)
            counters = stats(emulator)

        assert done.state == "succeeded" and done.deployed_model is not None
        assert counters["throttled"] == 3 and counters["server_errors"] == 3
        assert counters["deployments_created"] == {done.fine_tuned_model: 1}

    def test_a_permanent_error_fails_the_job_with_dashscopes_message(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, dashscope=scenario()):
            done = pump.until_settled(pump.submit(make_dashscope_spec(
                tmp_path, base_model="llama-3-8b-instruct")).id)

        assert done.state == "failed"
        assert done.failure_kind == "provider_rejected"
        last = pump.history(done.id)[-1]
        assert (last.from_state, last.to_state) == ("submitting", "failed")
        assert last.reason is not None
        assert last.reason.startswith("dashscope create job HTTP 400: InvalidParameter: Model "
                                      "llama-3-8b-instruct does not support fine-tuning")

    def test_a_training_failure_fails_the_job_with_dashscopes_reason(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        failing = scenario(fail_jobs={"code": "InternalError.Algo",
                                      "message": "loss diverged at step 40"})
        with in_process_emulator(clock, dashscope=failing) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
            counters = stats(emulator)

        assert done.state == "failed" and done.fine_tuned_model is None
        assert done.failure_kind == "provider_failed_job"
        assert done.error == ("provider failed the job: InternalError.Algo: loss diverged at "
                              "step 40")
        assert counters["deployments_created"] == {}


class TestExactlyOneDeployment:
    def test_a_crash_after_the_provider_created_the_deployment_does_not_create_a_second(
            self, pump: Pump, clock: Clock, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """The create landed but the worker never saw the answer (killed, or timed out):
        the retry finds the deployment by its tuned model instead of creating another."""
        create = DashScopeClient.create_deployment

        def create_then_lose_the_answer(self: DashScopeClient,
                                        request: DeploymentRequest) -> RemoteDeployment:
            create(self, request)
            raise ProviderUnavailable("timed out (ReadTimeout)", provider="dashscope",
                                      operation="create deployment")

        monkeypatch.setattr(DashScopeClient, "create_deployment", create_then_lose_the_answer)
        with in_process_emulator(clock, dashscope=scenario()) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
            counters = stats(emulator)

        assert done.state == "succeeded"
        assert counters["deployments_created"] == {done.fine_tuned_model: 1}
        [deployment] = deployment_of(pump, done.id)
        assert any(reason.startswith("found the deployment an earlier attempt created")
                   for _, reason in deployment_history(pump, deployment.id))

    def test_a_run_that_lost_the_race_deletes_the_deployment_it_created(
            self, pump: Pump, clock: Clock, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """A stalled deploy step whose job was re-driven meanwhile (and whose retry created
        and recorded a deployment) deletes its own duplicate instead of leaving it to bill."""
        create = DashScopeClient.create_deployment
        calls: list[str] = []

        def stall_then_create(self: DashScopeClient,
                              request: DeploymentRequest) -> RemoteDeployment:
            calls.append(request.job_id)
            if len(calls) == 1:
                clock.advance(pump.settings.lease_s + 1)
                pump.scheduler().tick()
                pump.run_sent(limit=1)  # the retry creates and records its deployment
            return create(self, request)

        monkeypatch.setattr(DashScopeClient, "create_deployment", stall_then_create)
        with in_process_emulator(clock, dashscope=scenario()) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id)
            counters = stats(emulator)
            live = emulator.get("/dashscope/api/v1/deployments").json()["output"]

        assert done.state == "succeeded"
        assert counters["deployments_created"] == {done.fine_tuned_model: 2}
        assert counters["deployments_deleted"] == 1
        assert [d["deployed_model"] for d in live["deployments"]] == [done.deployed_model]

    def test_a_job_that_gives_up_while_deploying_has_its_deployment_deleted(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        """Nothing bills forever: the scheduler deletes a deployment its job no longer wants."""
        flaky = scenario(deployment_duration_s=3600, server_errors={
            "count": 1000, "status": 500, "routes": "^/api/v1/deployments/", "methods": ["GET"]})
        with in_process_emulator(clock, dashscope=flaky) as emulator:
            done = pump.until_settled(pump.submit(make_dashscope_spec(tmp_path)).id,
                                      step_s=60)
            before = stats(emulator)
            settle_deployments(pump)
            after = stats(emulator)

        assert done.state == "failed"
        assert done.failure_kind == "gave_up"
        assert (done.error or "").startswith("gave up after 5 attempts at the deploy step")
        assert "the scheduler deletes its deployment" in (done.error or "")
        assert before["deployments"] == 1 and after["deployments_deleted"] == 1
        [deployment] = deployment_of(pump, done.id)
        assert deployment.state == "deleted"
        last = pump.history(done.id)[-1]
        assert (last.from_state, last.to_state) == ("failed", "failed")
        assert last.reason is not None and "its job is failed and no longer wants it" in (
            last.reason)


class TestDeployCommand:
    def test_deploy_refuses_what_cannot_be_deployed(self, pump: Pump, clock: Clock,
                                                    tmp_path: Path) -> None:
        from tests.helpers import make_spec

        with in_process_emulator(clock, dashscope=scenario()):
            openai_job = pump.until_settled(pump.submit(make_spec(tmp_path)).id)
            served = pump.until_settled(pump.submit(make_dashscope_spec(
                tmp_path, name="other")).id)

        with pytest.raises(UserError, match="openai serves tuned models without a deployment"):
            deployment_ops.deploy(pump.engine, openai_job.id)
        with pytest.raises(UserError, match=r"already has deployment .* `tunectl undeploy"):
            deployment_ops.deploy(pump.engine, served.id)
        with pytest.raises(UserError, match="--capacity must be at least 1"):
            deployment_ops.deploy(pump.engine, served.id, capacity=0)
