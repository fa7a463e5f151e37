"""The whole lifecycle through the real runner, scheduler and emulator, one step at a time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator import jobs as job_ops
from orchestrator.config import Settings
from orchestrator.db.engine import session_scope
from orchestrator.db.models import ProviderFile
from orchestrator.errors import (
    DatasetError,
    MissingCredential,
    ProviderAuthError,
    ProviderRejected,
    TunectlError,
    UnknownProvider,
)
from orchestrator.providers.base import JobRequest, RemoteJob
from orchestrator.providers.http import set_shared_client
from orchestrator.providers.openai.emulator import Scenario
from orchestrator.states import State
from orchestrator.steps.runner import failed
from tests.helpers import Clock, Pump, in_process_emulator, make_spec


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pump(settings: Settings, engine: sa.Engine, clock: Clock) -> Pump:
    return Pump(settings, engine, clock)


def states(pump: Pump, job_id: str) -> list[str]:
    return [t.to_state for t in pump.history(job_id)]


class TestHappyPath:
    def test_sft_job_reaches_succeeded_through_every_state(self, pump: Pump, clock: Clock,
                                                          tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=10)) as emulator:
            job = pump.submit(make_spec(tmp_path, suffix="bot"))
            done = pump.until_settled(job.id)

            assert done.state == "succeeded"
            assert done.fine_tuned_model and done.fine_tuned_model.startswith("ft:gpt-4o-mini")
            assert states(pump, job.id)[:5] == ["queued", "validating", "uploading",
                                                "submitting", "training"]
            assert states(pump, job.id)[-2:] == ["finalizing", "succeeded"]
            assert [t.seq for t in pump.history(job.id)] == list(
                range(1, len(pump.history(job.id)) + 1))
            stats = emulator.get("/_emulator/stats").json()
        assert stats["jobs"] == 1
        assert stats["requests"]["POST /v1/files"] == 1


class TestDpoAndValidation:
    def test_a_dpo_job_succeeds_with_its_method_sent_to_the_provider(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        from tests.helpers import write_dataset

        with in_process_emulator(clock, Scenario(job_duration_s=2)) as emulator:
            spec = make_spec(tmp_path, method="dpo", hyperparameters={"beta": 0.2},
                             training_file=write_dataset(tmp_path / "d.jsonl", method="dpo"))
            job = pump.submit(spec)
            done = pump.until_settled(job.id)

            remote = emulator.get(f"/v1/fine_tuning/jobs/{done.provider_job_id}").json()
        assert done.state == "succeeded"
        assert remote["method"]["type"] == "dpo"
        assert remote["method"]["dpo"]["hyperparameters"]["beta"] == 0.2

    def test_a_bad_dataset_fails_at_validation_before_any_upload(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' * 12)
        with in_process_emulator(clock) as emulator:
            job = pump.submit(make_spec(tmp_path, training_file=bad))
            done = pump.until_settled(job.id)
            stats = emulator.get("/_emulator/stats").json()

        assert done.state == "failed"
        assert done.failure_kind == "dataset"
        assert done.error == (
            "training_file:1: the example has no assistant message, so there is nothing to "
            'learn; add the reply as {"role": "assistant", "content": "..."} '
            "[no_assistant_message] | training_file:2 [no_assistant_message] | "
            "training_file:3 [no_assistant_message] (+10 more errors)")
        assert states(pump, job.id) == ["queued", "validating", "failed"]
        assert stats["files"] == 0


    def test_a_job_over_its_budget_fails_at_validation_with_the_estimate(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        """12 small examples x 3 epochs at $3/1M cost about $0.0016; a $0.001 budget stops it."""
        with in_process_emulator(clock) as emulator:
            spec = make_spec(tmp_path, max_cost_usd=0.001, hyperparameters={"n_epochs": 3})
            done = pump.until_settled(pump.submit(spec).id)
            stats = emulator.get("/_emulator/stats").json()

        assert done.state == "failed"
        assert done.failure_kind == "dataset"
        assert states(pump, done.id) == ["queued", "validating", "failed"]
        reason = pump.history(done.id)[-1].reason or ""
        assert reason.startswith("training_file: estimated training cost $0.00")
        assert "x 3 epochs, at $3.00 per 1M for gpt-4o-mini-2024-07-18" in reason
        assert "is over max_cost_usd $0.001" in reason
        assert stats["files"] == 0

    def test_a_valid_dataset_puts_its_summary_on_the_job_and_in_history(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=2)):
            spec = make_spec(tmp_path, max_cost_usd=5, hyperparameters={"n_epochs": 2})
            done = pump.until_settled(pump.submit(spec).id)

        assert done.state == "succeeded"
        assert done.dataset is not None
        training = done.dataset["training"]
        assert training["examples"] == 12 and training["epochs"] == 2
        assert training["billed_tokens"] == 2 * training["tokens"]["total"]
        assert 0 < done.dataset["estimated_cost_usd"] < 5
        validated = next(t for t in pump.history(done.id) if t.from_state == "validating")
        assert validated.data == done.dataset
        assert validated.reason is not None and "12 training examples" in validated.reason


class TestProviderOutcomes:
    def test_a_provider_failure_fails_the_job_with_the_providers_reason(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=2)):
            spec = make_spec(tmp_path, labels={"emulator_fail": "invalid_training_file"})
            done = pump.until_settled(pump.submit(spec).id)

        assert done.state == "failed"
        assert done.failure_kind == "provider_failed_job"
        assert done.error is not None and "invalid_training_file" in done.error
        assert pump.history(done.id)[-1].reason == done.error

    def test_throttling_and_server_errors_delay_the_job_but_do_not_fail_it(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        scenario = Scenario.model_validate({
            "job_duration_s": 2, "throttle": {"count": 2, "retry_after_s": 7},
            "server_errors": {"count": 2, "status": 503}})
        with in_process_emulator(clock, scenario) as emulator:
            done = pump.until_settled(pump.submit(make_spec(tmp_path)).id)
            stats = emulator.get("/_emulator/stats").json()

        assert done.state == "succeeded"
        assert stats["throttled"] == 2 and stats["server_errors"] == 2

    def test_a_retry_waits_at_least_as_long_as_retry_after(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        scenario = Scenario.model_validate({"throttle": {"count": 1, "retry_after_s": 25}})
        with in_process_emulator(clock, scenario):
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent()
        after = pump.job(job.id)

        assert after.state == "uploading"
        assert after.last_error is not None and "HTTP 429" in after.last_error
        assert after.next_run_at is not None
        assert after.next_run_at >= clock() + timedelta(seconds=25)

    @pytest.mark.parametrize("retry_after", ["inf", "1e12", "86400000"])
    def test_an_absurd_retry_after_is_capped_and_never_crashes_the_step(
            self, pump: Pump, clock: Clock, tmp_path: Path, retry_after: str,
            monkeypatch: pytest.MonkeyPatch) -> None:
        import httpx

        def throttled(request: httpx.Request) -> httpx.Response:
            return httpx.Response(429, headers={"retry-after": retry_after},
                                  json={"error": {"message": "slow down"}})

        job = pump.submit(make_spec(tmp_path))
        set_shared_client(httpx.Client(transport=httpx.MockTransport(throttled)))
        try:
            pump.scheduler().tick()
            outcomes = pump.run_sent()
        finally:
            set_shared_client(None)
        after = pump.job(job.id)

        assert outcomes[-1].startswith("retry in")
        assert after.next_run_at is not None
        assert after.next_run_at <= clock() + timedelta(seconds=pump.settings.retry_cap_s)

    def test_a_permanent_error_fails_the_job_at_once(self, pump: Pump, clock: Clock,
                                                     tmp_path: Path) -> None:
        with in_process_emulator(clock):
            job = pump.submit(make_spec(tmp_path, base_model="gpt-4o-mini-2024-07-18"))
            pump.settings.openai_api_key = None  # type: ignore[misc]
            done = pump.until_settled(job.id)

        assert done.state == "failed"
        assert done.failure_kind == "missing_credential"
        assert done.error == ("OPENAI_API_KEY is not set; export it or set OPENAI_API_KEY_FILE "
                              "to a file")

    def test_a_job_cancelled_at_the_provider_ends_cancelled(self, pump: Pump, clock: Clock,
                                                            tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=60)) as emulator:
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent()
            emulator.post(f"/v1/fine_tuning/jobs/{pump.job(job.id).provider_job_id}/cancel")
            done = pump.until_settled(job.id)

        assert done.state == "cancelled"
        assert states(pump, job.id)[-2:] == ["finalizing", "cancelled"]


class TestAtLeastOnce:
    def test_a_duplicate_step_message_does_nothing(self, pump: Pump, clock: Clock,
                                                   tmp_path: Path) -> None:
        with in_process_emulator(clock) as emulator:
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            message = pump.sent[0]
            pump.sent.append(message)  # the broker delivers the validate step twice
            outcomes = pump.run_sent()
            stats = emulator.get("/_emulator/stats").json()

        assert "skipped" in outcomes
        assert stats["jobs"] == 1 and stats["files"] == 1
        assert [t.to_state for t in pump.history(job.id)].count("validating") == 1

    def test_a_lost_step_is_sent_again_after_its_lease_expires(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock):
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.sent.clear()  # the message is lost (broker flushed)
            pump.scheduler().tick()
            assert pump.sent == []  # still leased
            clock.advance(pump.settings.lease_s + 1)
            report = pump.scheduler().tick()
            done = pump.until_settled(job.id)

        assert report.rescued == 1 and report.dispatched == 1
        assert done.state == "succeeded"

    def test_a_crash_after_the_provider_created_the_job_does_not_create_a_second(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=5)) as emulator:
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent()  # ... up to training
            # Simulate a worker that created the provider job, then died before recording it:
            # put the job back in submitting with the provider job unknown to tunectl.
            with session_scope(pump.engine) as session:
                session.connection().exec_driver_sql(
                    "UPDATE jobs SET state = 'submitting', provider_job_id = NULL, "
                    "lease_owner = NULL, lease_expires_at = NULL")
            done = pump.until_settled(job.id)
            stats = emulator.get("/_emulator/stats").json()

        assert done.state == "succeeded"
        assert stats["jobs"] == 1
        assert "found the provider job an earlier attempt created" in (
            pump.history(job.id)[-3].reason or "") or any(
            "found the provider job" in (t.reason or "") for t in pump.history(job.id))

    def test_a_crash_after_the_upload_landed_does_not_upload_twice(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=5)) as emulator:
            job = pump.submit(make_spec(tmp_path))
            # The upload reached the provider but the worker died before recording it: the
            # claim row is left without a file id, and the file exists at the provider.
            path = pump.settings.blob_dir / job.training_blob[:2] / job.training_blob
            emulator.post("/v1/files",
                          data={"purpose": "fine-tune"},
                          files={"file": (f"tunectl-{job.training_blob}.jsonl",
                                          path.read_bytes())})
            with session_scope(pump.engine) as session:
                session.add(ProviderFile(provider="openai", account=account(pump), bytes=1,
                                         sha256=job.training_blob, claimed_by=job.id,
                                         claimed_until=clock()))
            done = pump.until_settled(job.id)
            stats = emulator.get("/_emulator/stats").json()

        assert done.state == "succeeded"
        assert stats["files"] == 2  # the one training file + the job's result file

    def test_two_jobs_with_the_same_dataset_upload_it_once(self, pump: Pump, clock: Clock,
                                                           tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=2)) as emulator:
            a = pump.submit(make_spec(tmp_path, name="a"))
            b = pump.submit(make_spec(tmp_path, name="b"))
            pump.until_settled(a.id)
            pump.until_settled(b.id)
            uploads = emulator.get("/_emulator/stats").json()["requests"]["POST /v1/files"]

        assert uploads == 1
        assert pump.job(a.id).training_file_id == pump.job(b.id).training_file_id


def account(pump: Pump) -> str:
    from orchestrator.providers import registry
    from orchestrator.providers.http import shared_client

    return registry.get("openai").connect(pump.settings, shared_client(pump.settings)).account


class TestCancel:
    def test_cancel_while_training_cancels_the_provider_job(self, pump: Pump, clock: Clock,
                                                            tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=60)) as emulator:
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent()
            assert pump.job(job.id).state == "training"
            job_ops.cancel(pump.engine, job.id, now=clock())
            done = pump.until_settled(job.id)
            remote = emulator.get(f"/v1/fine_tuning/jobs/{done.provider_job_id}").json()

        assert done.state == "cancelled"
        assert remote["status"] == "cancelled"
        assert states(pump, job.id)[-2:] == ["cancelling", "cancelled"]

    def test_cancel_before_upload_is_immediate_and_a_late_step_writes_nothing(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock) as emulator:
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            assert job_ops.cancel(pump.engine, job.id, now=clock()).state == "cancelled"
            outcomes = pump.run_sent()
            stats = emulator.get("/_emulator/stats").json()

        assert outcomes == ["skipped"]
        assert stats["files"] == 0 and stats["jobs"] == 0
        assert states(pump, job.id) == ["queued", "cancelled"]

    @pytest.mark.parametrize("create_times_out", [
        pytest.param(False, id="create-returned"),
        pytest.param(True, id="create-landed-but-timed-out"),
    ])
    def test_a_cancel_during_submit_waits_for_it_and_cancels_what_it_created(
            self, pump: Pump, clock: Clock, tmp_path: Path, create_times_out: bool,
            monkeypatch: pytest.MonkeyPatch) -> None:
        from orchestrator.errors import ProviderUnavailable
        from orchestrator.providers.openai.adapter import OpenAIClient

        create = OpenAIClient.create_job

        def cancel_then_create(self: OpenAIClient, request: JobRequest) -> RemoteJob:
            job_ops.cancel(pump.engine, request.job_id, now=clock())  # lands mid-step
            pump.scheduler().tick()
            assert pump.sent == []  # the cancel step waits: submit still holds the lease
            remote = create(self, request)
            if create_times_out:
                raise ProviderUnavailable("timed out", provider="openai")
            return remote

        monkeypatch.setattr(OpenAIClient, "create_job", cancel_then_create)
        with in_process_emulator(clock, Scenario(job_duration_s=60)) as emulator:
            job = pump.submit(make_spec(tmp_path))
            done = pump.until_settled(job.id)
            remote = emulator.get("/v1/fine_tuning/jobs").json()["data"]

        assert done.state == "cancelled"
        assert [j["status"] for j in remote] == ["cancelled"]


class TestGivingUp:
    def test_a_step_that_keeps_failing_fails_the_job_with_the_reason_in_history(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        scenario = Scenario.model_validate({"server_errors": {"count": 1000, "status": 502}})
        with in_process_emulator(clock, scenario):
            done = pump.until_settled(pump.submit(make_spec(tmp_path)).id, step_s=60)

        assert done.state == "failed"
        assert done.failure_kind == "gave_up"
        last = pump.history(done.id)[-1]
        assert last.reason is not None
        assert last.reason.startswith("gave up after 5 attempts at the upload step; "
                                      "last error: openai")
        assert "HTTP 502" in last.reason


class TestOverlappingRuns:
    def test_a_run_that_lost_its_lease_cancels_the_provider_job_it_created(
            self, pump: Pump, clock: Clock, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """A stalled submit whose job was re-driven meanwhile (and recorded another provider
        job) cancels its own duplicate instead of leaving it to train and bill."""
        from orchestrator.providers.openai.adapter import OpenAIClient

        create = OpenAIClient.create_job
        calls: list[str] = []

        def stall_then_create(self: OpenAIClient, request: JobRequest) -> RemoteJob:
            calls.append(request.job_id)
            if len(calls) == 1:
                # This run stalls before its create lands: its lease expires, the scheduler
                # re-drives the job, and the retry creates and records its own provider job.
                clock.advance(pump.settings.lease_s + 1)
                pump.scheduler().tick()
                pump.run_sent(limit=1)
            return create(self, request)

        monkeypatch.setattr(OpenAIClient, "create_job", stall_then_create)
        with in_process_emulator(clock, Scenario(job_duration_s=60)) as emulator:
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent(limit=3)  # validate, upload, and the submit that stalls
            remote = {j["id"]: j["status"] for j in
                      emulator.get("/v1/fine_tuning/jobs").json()["data"]}

        recorded = pump.job(job.id).provider_job_id
        assert pump.job(job.id).state == "training"
        assert remote[recorded] != "cancelled"
        assert sorted(status for rid, status in remote.items() if rid != recorded) == [
            "cancelled"]


class TestReuse:
    def test_a_dataset_deleted_at_the_provider_is_uploaded_again(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        with in_process_emulator(clock, Scenario(job_duration_s=1)) as emulator:
            first = pump.until_settled(pump.submit(make_spec(tmp_path, name="first")).id)
            emulator.delete(f"/v1/files/{first.training_file_id}")  # a user tidies up
            second = pump.until_settled(pump.submit(make_spec(tmp_path, name="second")).id)

        assert second.state == "succeeded"
        assert second.training_file_id != first.training_file_id


class TestLiveProviderJobs:
    def test_a_credential_error_while_training_is_retried_not_failed(
            self, pump: Pump, clock: Clock, tmp_path: Path) -> None:
        """Failing would stop tunectl watching a job that goes on training and billing."""
        with in_process_emulator(clock, Scenario(job_duration_s=30)):
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent()
            assert pump.job(job.id).state == "training"
            key = pump.settings.openai_api_key
            pump.settings.openai_api_key = None  # a worker lost its secret
            clock.advance(pump.settings.poll_interval_s)
            pump.scheduler().tick()
            pump.run_sent()
            stuck = pump.job(job.id)
            pump.settings.openai_api_key = key  # the operator fixes it
            done = pump.until_settled(job.id)

        assert stuck.state == "training"
        assert stuck.last_error is not None and "OPENAI_API_KEY is not set" in stuck.last_error
        assert done.state == "succeeded"

    def test_a_cancel_during_a_poll_is_acted_on_at_once(self, pump: Pump, clock: Clock,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        from orchestrator.providers.openai.adapter import OpenAIClient

        get_job = OpenAIClient.get_job
        cancelled: list[str] = []

        def cancel_during_poll(self: OpenAIClient, provider_job_id: str) -> RemoteJob:
            if not cancelled:
                cancelled.append(job_ops.cancel(pump.engine, job.id, now=clock()).state)
            return get_job(self, provider_job_id)

        with in_process_emulator(clock, Scenario(job_duration_s=600)):
            job = pump.submit(make_spec(tmp_path))
            pump.scheduler().tick()
            pump.run_sent(limit=3)  # validate, upload, submit
            monkeypatch.setattr(OpenAIClient, "get_job", cancel_during_poll)
            assert pump.run_sent(limit=1) == ["stale"]  # the poll lost to the cancel
            pump.scheduler().tick()  # no clock moved: the job is due at once
            pump.run_sent()

        assert cancelled == ["cancelling"]
        assert pump.job(job.id).state == "cancelled"


@pytest.mark.parametrize(("error", "kind"), [
    pytest.param(DatasetError("train.jsonl:3: not JSON"), "dataset", id="dataset"),
    pytest.param(MissingCredential("OPENAI_API_KEY is not set"), "missing_credential",
                 id="missing-credential"),
    pytest.param(UnknownProvider("unknown provider 'nope'"), "spec", id="spec"),
    pytest.param(ProviderAuthError("bad key", provider="openai", status=401), "provider_auth",
                 id="provider-auth"),
    pytest.param(ProviderRejected("no such model", provider="openai", status=400),
                 "provider_rejected", id="provider-rejected"),
])
def test_every_error_a_step_fails_on_has_a_failure_kind(error: TunectlError,
                                                        kind: str) -> None:
    """The kind dashboards group failures on (failure_reasons), whatever the error text."""
    outcome = failed(error)

    assert outcome.target is State.FAILED
    assert outcome.fields == {"error": str(error), "failure_kind": kind}
