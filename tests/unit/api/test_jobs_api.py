"""The job routes do what the CLI does: the same operations, the same refusals in one line,
and nothing stored when a request is refused."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from orchestrator.api.problems import DATABASE_DOWN
from orchestrator.config import Settings
from orchestrator.db.engine import make_engine
from orchestrator.db.types import utcnow
from orchestrator.providers.openai.emulator import Scenario
from tests.helpers import Clock, Pump, in_process_emulator, write_dataset
from tests.unit.api.conftest import SPEC, auth, submit


def upload(client: TestClient, who: str, data: bytes) -> str:
    response = client.post("/v1/datasets", headers={**auth(who), "content-type":
                                                   "application/octet-stream"}, content=data)
    assert response.status_code == 201, response.text
    reference: str = response.json()["reference"]
    return reference


class TestSubmit:
    def test_a_multipart_submit_stores_the_dataset_and_queues_the_job_in_the_tokens_project(
            self, client: TestClient, tmp_path: Path) -> None:
        job = submit(client, "alpha", tmp_path, idempotency_key="k-1")

        assert job["created"] is True and job["state"] == "queued"
        assert job["project"] == "alpha" and job["labels"] == {"team": "support"}
        again = submit(client, "alpha", tmp_path, idempotency_key="k-1")
        assert again["id"] == job["id"] and again["created"] is False

    def test_json_and_yaml_specs_name_datasets_uploaded_before(
            self, client: TestClient, tmp_path: Path) -> None:
        ref = upload(client, "alpha", write_dataset(tmp_path / "t.jsonl").read_bytes())
        as_json = client.post("/v1/jobs", headers=auth("alpha"),
                              json={**SPEC, "training_file": ref, "validation_file": ref})
        as_yaml = client.post("/v1/jobs", headers={**auth("alpha"),
                                                   "content-type": "application/yaml"},
                              content=yaml.safe_dump({**SPEC, "name": "y", "training_file": ref}))

        assert as_json.status_code == 201, as_json.text
        assert as_yaml.status_code == 201, as_yaml.text
        assert as_yaml.json()["name"] == "y"

    def test_a_reused_idempotency_key_with_another_spec_is_a_conflict(
            self, client: TestClient, tmp_path: Path) -> None:
        submit(client, "alpha", tmp_path, idempotency_key="k-2")
        dataset = write_dataset(tmp_path / "train.jsonl")
        response = client.post("/v1/jobs", headers=auth("alpha"), data={"spec": json.dumps(
            {**SPEC, "idempotency_key": "k-2", "suffix": "other"})},
            files={"training_file": ("t.jsonl", dataset.read_bytes())})

        assert response.status_code == 409
        assert "idempotency key 'k-2' already belongs to job" in response.json()["detail"]

    def test_a_bad_spec_is_refused_in_one_line_naming_the_field(
            self, client: TestClient) -> None:
        response = client.post("/v1/jobs", headers=auth("alpha"),
                               json={**SPEC, "trainig_file": "x"})

        assert response.status_code == 400
        detail = response.json()["detail"]
        assert detail.startswith("request body: trainig_file: is not a known field")
        assert "did you mean 'training_file'?" in detail and "\n" not in detail

    def test_a_vertex_spec_may_name_only_a_bucket_the_operator_allows(
            self, client: TestClient, tmp_path: Path) -> None:
        """Else any caller could point jobs at whatever the service account reaches."""
        dataset = write_dataset(tmp_path / "train.jsonl").read_bytes()
        spec = {"name": "g", "provider": "vertex", "base_model": "gemini-2.5-flash",
                "training_file": "train.jsonl"}

        def post(**options: str) -> Any:
            return client.post("/v1/jobs", headers=auth("alpha"), files={
                "training_file": ("train.jsonl", dataset)}, data={"spec": json.dumps(
                    {**spec, "provider_options": options})})

        refused = post(bucket="someone-elses-bucket")
        accepted = post(bucket="tunectl-test-data")

        assert refused.status_code == 400 and "TUNECTL_GCS_BUCKETS" in refused.json()["detail"]
        assert accepted.status_code == 201, accepted.text

    def test_a_spec_must_name_an_uploaded_dataset_by_its_hash(
            self, client: TestClient, engine: sa.Engine) -> None:
        path = client.post("/v1/jobs", headers=auth("alpha"),
                           json={**SPEC, "training_file": "/etc/passwd"})
        unknown = client.post("/v1/jobs", headers=auth("alpha"),
                              json={**SPEC, "training_file": "sha256:" + "a" * 64})

        assert path.status_code == 400 and "sha256:<hex>" in path.json()["detail"]
        assert unknown.status_code == 400
        assert "training_file: no dataset sha256:aaaa" in unknown.json()["detail"]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 0

    def test_duplicate_keys_and_non_finite_numbers_are_refused_as_the_cli_does(
            self, client: TestClient) -> None:
        twice = client.post("/v1/jobs", headers={**auth("alpha"),
                                                 "content-type": "application/json"},
                            content=b'{"name": "a", "name": "b"}')
        nan = client.post("/v1/jobs", headers={**auth("alpha"),
                                               "content-type": "application/json"},
                          content=b'{"name": "a", "seed": NaN}')

        assert twice.status_code == 400 and "name: appears twice" in twice.json()["detail"]
        assert nan.status_code == 400 and "NaN is not a valid number" in nan.json()["detail"]

    def test_a_nul_character_is_refused_before_it_reaches_the_database(
            self, client: TestClient) -> None:
        """PostgreSQL cannot store NUL in text or JSONB: schemathesis found the 500."""
        spec = client.post("/v1/jobs", headers=auth("alpha"),
                           json={**SPEC, "labels": {"team": "a\u0000b"}})
        query = client.get("/v1/jobs", headers=auth("alpha"), params={"provider": "\x00"})
        path = client.get("/v1/jobs/job%00x", headers=auth("alpha"))

        assert spec.status_code == 400
        assert spec.json()["detail"] == "request body: labels.team: holds a NUL character; " \
                                        "remove it"
        assert query.status_code == 422 and path.status_code == 422

    @pytest.mark.parametrize(("change", "why"), [
        pytest.param({"trainig_file": "x"}, "trainig_file: is not a known field",
                     id="invalid-spec"),
        pytest.param({"hyperparameters": {"n_epochs": 99}},
                     'hyperparameters.n_epochs: must be an integer from 1 to 50',
                     id="refused-by-the-provider-plugin"),
    ])
    def test_a_refused_multipart_submit_stores_nothing(
            self, client: TestClient, api_settings: Settings, engine: sa.Engine,
            tmp_path: Path, change: dict[str, object], why: str) -> None:
        dataset = write_dataset(tmp_path / "train.jsonl")
        response = client.post("/v1/jobs", headers=auth("alpha"),
                               data={"spec": json.dumps({**SPEC, **change})},
                               files={"training_file": ("t.jsonl", dataset.read_bytes())})

        assert response.status_code == 400 and why in response.json()["detail"]
        blobs = api_settings.blob_dir
        assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM uploaded_datasets"
                                        ).scalar_one() == 0

    def test_a_spec_nested_too_deeply_is_refused_in_one_line(
            self, client: TestClient, tmp_path: Path) -> None:
        """PyYAML recurses per nesting level: schemathesis found the 500."""
        deep = "[" * 1_000
        as_yaml = client.post("/v1/jobs", headers={**auth("alpha"),
                                                   "content-type": "application/yaml"},
                              content=deep)
        as_part = client.post("/v1/jobs", headers=auth("alpha"), data={"spec": deep},
                              files={"training_file": ("t.jsonl", b"{}\n")})

        for response in (as_yaml, as_part):
            assert response.status_code == 400
            assert response.json()["detail"] == "request body:1: nested too deeply"

    def test_another_content_type_is_refused(self, client: TestClient) -> None:
        response = client.post("/v1/jobs", headers={**auth("alpha"),
                                                    "content-type": "text/plain"},
                               content=b"name: x")

        assert response.status_code == 415
        assert "application/json, application/yaml or multipart" in response.json()["detail"]


class TestLimits:
    def test_a_body_over_the_limit_is_refused_before_it_is_read(
            self, api_settings: Settings, engine: sa.Engine) -> None:
        from orchestrator.api.app import create_app

        small = api_settings.model_copy(update={"api_max_body_bytes": 2048,
                                                "api_max_upload_bytes": 4096})
        with TestClient(create_app(small, engine)) as client:
            spec = client.post("/v1/jobs", headers=auth("alpha"),
                               json={**SPEC, "name": "x" * 3000})
            dataset = client.post("/v1/datasets", headers=auth("alpha"),
                                  content=b"x" * 5000)
            streamed = client.post("/v1/datasets", headers=auth("alpha"),
                                   content=iter([b"x" * 3000, b"x" * 3000]))

        assert spec.status_code == 413 and "limit of 2048 bytes" in spec.json()["detail"]
        assert dataset.status_code == 413 and "limit of 4096 bytes" in dataset.json()["detail"]
        assert streamed.status_code == 413
        blobs = small.blob_dir
        assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]

    def test_an_empty_dataset_is_refused(self, client: TestClient) -> None:
        response = client.post("/v1/datasets", headers=auth("alpha"), content=b"")

        assert response.status_code == 400 and "empty" in response.json()["detail"]


class TestList:
    def test_filters_and_pages_never_repeat_or_skip_a_job(
            self, client: TestClient, tmp_path: Path) -> None:
        ids = [str(submit(client, "alpha", tmp_path, name=f"j{i}",
                          labels={"team": "a" if i % 2 else "b", "n": str(i)})["id"])
               for i in range(7)]
        seen, cursor = [], None
        while True:
            params: dict[str, str | int] = {"limit": 3, **({"cursor": cursor} if cursor
                                                            else {})}
            page = client.get("/v1/jobs", headers=auth("alpha"), params=params).json()
            seen += [j["id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break

        assert seen == list(reversed(ids))
        labelled = client.get("/v1/jobs", headers=auth("alpha"),
                              params=[("label", "team=a"), ("label", "n=3")]).json()["jobs"]
        assert [j["id"] for j in labelled] == [ids[3]]
        future = (utcnow() + timedelta(hours=1)).isoformat()
        assert client.get("/v1/jobs", headers=auth("alpha"), params={
            "created_after": future}).json()["jobs"] == []
        assert len(client.get("/v1/jobs", headers=auth("alpha"), params={
            "created_before": future, "state": "queued",
            "provider": "openai"}).json()["jobs"]) == 7
        assert client.get("/v1/jobs", headers=auth("alpha"), params={
            "state": "failed"}).json()["jobs"] == []

    def test_bad_parameters_are_refused_in_one_line(self, client: TestClient) -> None:
        cursor = client.get("/v1/jobs", headers=auth("alpha"), params={"cursor": "zzz"})
        naive = client.get("/v1/jobs", headers=auth("alpha"),
                           params={"created_after": "2026-01-01T00:00:00"})
        seconds = client.get("/v1/jobs", headers=auth("alpha"), params={"created_after": "0.0"})
        state = client.get("/v1/jobs", headers=auth("alpha"), params={"state": "asleep"})

        assert cursor.status_code == 422 and "start again without it" in cursor.json()["detail"]
        assert naive.status_code == 422 and "created_after" in naive.json()["detail"]
        assert seconds.status_code == 422
        assert seconds.json()["detail"].startswith("query.created_after: Input should be an "
                                                   "ISO 8601 time with a time zone")
        assert state.status_code == 422 and naive.json()["detail"].count("\n") == 0

    @pytest.mark.parametrize(("params", "why"), [
        pytest.param({"created_after": "0001-01-01T00:00:00+05:00"},
                     "query.created_after: Input should be a time within the years 1 to 9999 "
                     "once in UTC", id="before-year-1"),
        pytest.param({"created_before": "9999-12-31T23:59:59-05:00"},
                     "query.created_before: Input should be a time within the years 1 to "
                     "9999 once in UTC", id="after-year-9999"),
        pytest.param({"cursor": base64.urlsafe_b64encode(json.dumps(
            ["0001-01-01T00:00:00+05:00", "job_x"]).encode()).decode().rstrip("=")},
            "is not one this server gave out; start again without it", id="in-a-cursor"),
    ])
    def test_a_time_outside_the_calendar_in_utc_is_refused_in_one_line(
            self, client: TestClient, params: dict[str, str], why: str) -> None:
        """Converting it to UTC overflows Python's datetime: schemathesis found the 500."""
        response = client.get("/v1/jobs", headers=auth("alpha"), params=params)

        assert response.status_code == 422
        assert why in response.json()["detail"] and "\n" not in response.json()["detail"]


class TestJobRoutes:
    def test_get_history_events_and_cancel(self, client: TestClient, tmp_path: Path) -> None:
        job = submit(client, "alpha", tmp_path)
        url = f"/v1/jobs/{job['id']}"

        got = client.get(url, headers=auth("alpha")).json()
        assert got["id"] == job["id"] and got["deployments"] == []
        history = client.get(f"{url}/history", headers=auth("alpha")).json()
        assert [(t["seq"], t["from"], t["to"]) for t in history] == [(1, None, "queued")]
        assert client.get(f"{url}/events", headers=auth("alpha")).json() == []
        cancelled = client.post(f"{url}/cancel", headers=auth("alpha"))
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        again = client.post(f"{url}/cancel", headers=auth("alpha"))
        assert again.status_code == 409
        assert again.json()["detail"] == f"job {job['id']} already cancelled; there is " \
                                         "nothing to cancel"
        assert client.get("/v1/jobs/job_nope", headers=auth("alpha")).status_code == 404

    def test_events_come_from_the_provider_once_its_job_exists(
            self, client: TestClient, api_settings: Settings, engine: sa.Engine,
            tmp_path: Path) -> None:
        clock = Clock()
        clock.current = utcnow()  # the API stamps jobs with the real time
        with in_process_emulator(clock, Scenario(job_duration_s=3)):
            job = submit(client, "alpha", tmp_path)
            Pump(api_settings, engine, clock).until_settled(str(job["id"]))
            events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth("alpha"))

        assert events.status_code == 200, events.text
        assert events.json() and {"at", "level", "message"} == set(events.json()[0])


class TestOperations:
    def test_health_and_readiness_need_no_token(self, client: TestClient) -> None:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"database": "ok", "broker": "ok"}

    def test_readiness_fails_when_the_broker_does_not_answer_naming_no_host(
            self, api_settings: Settings, engine: sa.Engine) -> None:
        from orchestrator.api.app import create_app

        down = api_settings.model_copy(update={"broker_url": "redis://:hunter2@127.0.0.1:1/0"})
        with TestClient(create_app(down, engine)) as client, capture_logs() as logs:
            ready = client.get("/readyz")

        assert ready.status_code == 503
        assert ready.json() == {"database": "ok", "broker": "unavailable"}
        assert [e["dependency"] for e in logs if e["event"] == "api.not_ready"] == ["broker"]

    def test_readiness_names_an_unmigrated_database_without_its_url(
            self, api_settings: Settings, tmp_path: Path) -> None:
        from orchestrator.api.app import create_app

        empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        with TestClient(create_app(api_settings, empty)) as client:
            ready = client.get("/readyz")
        empty.dispose()

        assert ready.status_code == 503
        assert ready.json()["database"] == "not migrated: run `tunectl db upgrade`"


class TestDatabaseDown:
    """A database that does not answer is a 503 on every route that needs it, with a
    generic line: the driver's message (host, port, user) goes to the log only."""

    URL = "postgresql://tunectl:hunter2@127.0.0.1:1/tunectl"

    @pytest.fixture
    def down(self, api_settings: Settings) -> Iterator[TestClient]:
        from orchestrator.api.app import create_app

        engine = make_engine(self.URL)
        with TestClient(create_app(api_settings, engine)) as client:
            yield client
        engine.dispose()

    @pytest.mark.parametrize(("method", "path", "who"), [
        ("POST", "/v1/jobs", "alpha"), ("POST", "/v1/datasets", "alpha"),
        ("GET", "/v1/jobs", "alpha"), ("GET", "/v1/jobs/job_x", "alpha"),
        ("GET", "/v1/jobs/job_x/history", "alpha"), ("GET", "/v1/jobs/job_x/events", "alpha"),
        ("POST", "/v1/jobs/job_x/cancel", "alpha"), ("GET", "/metrics", "ops"),
    ])
    def test_every_route_that_needs_it_is_a_503_naming_no_host(
            self, down: TestClient, method: str, path: str, who: str) -> None:
        body: dict[str, Any] = {"json": {**SPEC, "training_file": "sha256:" + "a" * 64}} \
            if path == "/v1/jobs" else {"content": b"{}\n"} if method == "POST" else {}
        with capture_logs() as logs:
            response = down.request(method, path, headers=auth(who), **body)

        assert response.status_code == 503, response.text
        assert response.json() == {"detail": DATABASE_DOWN}
        assert response.headers["retry-after"] == "5"
        logged = [e for e in logs if e["event"] == "api.database_unavailable"]
        assert logged and "127.0.0.1" in logged[0]["error"]

    def test_readiness_says_unavailable_and_logs_why(self, down: TestClient) -> None:
        with capture_logs() as logs:
            ready = down.get("/readyz")

        assert ready.status_code == 503
        assert ready.json()["database"] == "unavailable"
        assert "127.0.0.1" not in ready.text and "hunter2" not in ready.text
        assert any(e["event"] == "api.not_ready" and "OperationalError" in e["error"]
                   for e in logs)

    @pytest.mark.parametrize(("exc", "unavailable"), [
        (sa.exc.OperationalError("SELECT 1", {}, Exception("server closed")), True),
        (sa.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
         True),
        (sa.exc.TimeoutError("QueuePool limit reached"), True),
        (sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (sa.exc.DataError("INSERT", {}, Exception("value too long")), False),
    ])
    def test_only_an_unreachable_database_is_a_503(self, exc: Exception,
                                                     unavailable: bool) -> None:
        """A constraint or a bad statement is a bug: the server's 500, with its traceback."""
        from orchestrator.api.problems import _unavailable

        assert _unavailable(exc) is unavailable

    def test_metrics_need_an_admin_token_and_count_the_fleet(
            self, client: TestClient, tmp_path: Path) -> None:
        submit(client, "alpha", tmp_path)

        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=auth("alpha")).status_code == 403
        text = client.get("/metrics", headers=auth("ops")).text
        assert 'tunectl_jobs{project="alpha",provider="openai",state="queued"} 1.0' in text
        assert ('tunectl_job_transitions_total{from_state="none",provider="openai",'
                'to_state="queued"} 1.0') in text
        assert "tunectl_scheduler_lag_seconds" in text and "tunectl_due_jobs 1.0" in text
