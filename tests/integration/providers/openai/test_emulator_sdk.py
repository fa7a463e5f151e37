"""Conformance: the official `openai` SDK against the emulator on a real uvicorn socket.

Every response the SDK receives is checked against the vendored spec schema of its route by an
httpx response hook, so each SDK call below is also a schema check.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from orchestrator.notify.receiver import Received, Receiver
from orchestrator.providers.openai import spec_schemas
from orchestrator.providers.openai.emulator import Scenario, create_app

API_KEY = "sk-emulator-conformance"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"emulator-webhook-conformance-01").decode()
TRAINING = b"".join(b'{"messages": [{"role": "user", "content": "q%d"}, '
                    b'{"role": "assistant", "content": "a%d"}]}\n' % (i, i) for i in range(12))
DPO = b"".join(b'{"input": {"messages": [{"role": "user", "content": "q%d"}]}, '
               b'"preferred_output": [{"role": "assistant", "content": "good"}], '
               b'"non_preferred_output": [{"role": "assistant", "content": "bad"}]}\n' % i
               for i in range(12))
JOB = r"/v1/fine_tuning/jobs/[^/]+"
RESPONSE_SCHEMAS = [
    ("POST", r"/v1/files", "OpenAIFile"),
    ("GET", r"/v1/files", "ListFilesResponse"),
    ("GET", r"/v1/files/[^/]+", "OpenAIFile"),
    ("DELETE", r"/v1/files/[^/]+", "DeleteFileResponse"),
    ("POST", r"/v1/fine_tuning/jobs", "FineTuningJob"),
    ("GET", r"/v1/fine_tuning/jobs", "ListPaginatedFineTuningJobsResponse"),
    ("GET", JOB, "FineTuningJob"),
    ("POST", JOB + r"/(cancel|pause|resume)", "FineTuningJob"),
    ("GET", JOB + r"/events", "ListFineTuningJobEventsResponse"),
    ("GET", JOB + r"/checkpoints", "ListFineTuningJobCheckpointsResponse"),
]


class SchemaChecker:
    """An httpx response hook that validates every JSON body against its route's schema."""

    def __init__(self) -> None:
        self.checked = 0
        self.problems: list[str] = []

    def schema_for(self, response: httpx.Response) -> str | None:
        if response.status_code >= 400:
            return "ErrorResponse"
        method, path = response.request.method, response.request.url.path
        for route_method, pattern, schema in RESPONSE_SCHEMAS:
            if method == route_method and re.fullmatch(pattern, path):
                return schema
        return None  # file content: raw bytes

    def __call__(self, response: Any) -> None:
        schema = self.schema_for(response)
        if schema is None:
            return
        response.read()
        problems = spec_schemas.validate(schema, response.json())
        self.problems += [f"{response.request.url.path} {schema}: {p}" for p in problems]
        self.checked += 1


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The emulator served by uvicorn on a free loopback port, in a background thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(api_key=API_KEY), log_level="warning", ws="none",
                            lifespan="off", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the emulator did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def admin(base_url: str) -> Iterator[Callable[..., None]]:
    """A fresh emulator state with short jobs; call it to change the scenario."""
    with httpx.Client(base_url=base_url) as http:

        def set_scenario(**fields: Any) -> None:
            scenario = Scenario(job_duration_s=0.5, **fields)
            http.put("/_emulator/scenario", json=scenario.model_dump()).raise_for_status()

        http.post("/_emulator/reset").raise_for_status()
        set_scenario()
        yield set_scenario


@pytest.fixture
def checker() -> Iterator[SchemaChecker]:
    checker = SchemaChecker()
    yield checker
    assert checker.problems == []


@pytest.fixture
def make_client(base_url: str, admin: Any,
                checker: SchemaChecker) -> Iterator[Callable[..., openai.OpenAI]]:
    """Build SDK clients (closed at teardown) whose responses all go through the checker."""
    clients: list[openai.OpenAI] = []

    def make(*, api_key: str = API_KEY, max_retries: int = 0,
             timeout: float = 10) -> openai.OpenAI:
        http_client = openai.DefaultHttpxClient(event_hooks={"response": [checker]})
        client = openai.OpenAI(api_key=api_key, base_url=f"{base_url}/v1",
                               max_retries=max_retries, timeout=timeout, http_client=http_client)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return make_client()


def stats(base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base_url}/_emulator/stats").json()
    return body


def wait_for_status(client: openai.OpenAI, job_id: str, status: str,
                    timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status != status:
        assert time.monotonic() < deadline, f"{job_id} stuck in {job.status}"
        time.sleep(0.05)
    return job


def training_file(client: openai.OpenAI, content: bytes = TRAINING) -> str:
    return client.files.create(file=("train.jsonl", content), purpose="fine-tune").id


def test_files_round_trip(client: openai.OpenAI, checker: SchemaChecker) -> None:
    created = client.files.create(file=("train.jsonl", TRAINING), purpose="fine-tune",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
    others = [training_file(client) for _ in range(2)]

    listed = [f.id for f in client.files.list(limit=2)]
    fetched = client.files.retrieve(created.id)
    content = client.files.content(created.id).read()
    deleted = client.files.delete(created.id)

    assert created.status == "processed" and created.expires_at == created.created_at + 3600
    assert listed == [*others[::-1], created.id]
    assert fetched == created
    assert content == TRAINING
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert checker.checked >= 7


def test_supervised_job_runs_to_success(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=training_file(client), suffix="conformance",
        metadata={"tunectl_job": "j-1"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})

    done = wait_for_status(client, job.id, "succeeded")
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50)]
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    results = client.files.content(done.result_files[0]).text

    assert job.status == "validating_files"
    assert re.fullmatch(r"ft:gpt-4o-mini:emulator:conformance:[A-Za-z0-9]{8}",
                        done.fine_tuned_model or "")
    assert done.trained_tokens and done.finished_at and done.error is None
    assert events[0] == "The job has successfully completed"
    assert events[-1] == f"Created fine-tuning job: {job.id}"
    assert [c.step_number for c in checkpoints] == [24, 12]
    assert results.startswith("step,train_loss")


def test_dpo_job_echoes_its_method(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=training_file(client, DPO),
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})

    done = wait_for_status(client, job.id, "succeeded")

    assert job.method and job.method.dpo and job.method.dpo.hyperparameters
    assert job.method.dpo.hyperparameters.n_epochs == "auto"
    assert done.method and done.method.dpo and done.method.dpo.hyperparameters
    assert done.method.type == "dpo"
    assert done.method.dpo.hyperparameters.beta == 0.1
    assert done.method.dpo.hyperparameters.n_epochs == 3


def test_list_filters_by_metadata_across_pages(client: openai.OpenAI, base_url: str) -> None:
    file = training_file(client)
    wanted = [client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file,
                                             metadata={"batch": "a", "i": str(i)}).id
              for i in range(5)]
    client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file,
                                   metadata={"batch": "b"})

    found = [j.id for j in client.fine_tuning.jobs.list(metadata={"batch": "a"}, limit=2)]

    assert found == wanted[::-1]
    assert stats(base_url)["requests"]["GET /v1/fine_tuning/jobs"] == 3


def test_pause_resume_cancel(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file(client),
                                         metadata={"emulator_duration_s": "60"})

    paused = client.fine_tuning.jobs.pause(job.id)
    resumed = client.fine_tuning.jobs.resume(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)

    assert (paused.status, resumed.status, cancelled.status) == ("paused", "queued", "cancelled")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_failed_job_reports_its_error(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file(client),
                                         metadata={"emulator_fail": "invalid_training_file"})

    failed = wait_for_status(client, job.id, "failed")

    assert failed.error and failed.error.code == "invalid_training_file"
    assert failed.fine_tuned_model is None


def test_sdk_retries_through_a_429_burst(make_client: Callable[..., openai.OpenAI],
                                         admin: Callable[..., None], base_url: str) -> None:
    admin(throttle={"count": 2, "retry_after_s": 0.05, "routes": "^/v1/files$"})

    files = make_client(max_retries=3).files.list()

    assert files.data == []
    counters = stats(base_url)
    assert (counters["throttled"], counters["requests"]["GET /v1/files"]) == (2, 3)


def test_429_without_retries_is_a_rate_limit_error(make_client: Callable[..., openai.OpenAI],
                                                   admin: Callable[..., None]) -> None:
    admin(throttle={"count": 1, "retry_after_s": 2})

    with pytest.raises(openai.RateLimitError) as raised:
        make_client().files.list()

    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers["retry-after"] == "2"
    assert raised.value.request_id and raised.value.request_id.startswith("req_")


def test_sdk_retries_a_server_error(make_client: Callable[..., openai.OpenAI],
                                    admin: Callable[..., None], base_url: str) -> None:
    admin(server_errors={"count": 1, "status": 503})

    make_client(max_retries=1).fine_tuning.jobs.list()

    assert stats(base_url)["server_errors"] == 1


def test_a_request_abandoned_during_latency_still_created_the_job(
        make_client: Callable[..., openai.OpenAI], admin: Callable[..., None]) -> None:
    """What a worker killed mid-submit leaves behind: the job exists, findable by metadata."""
    client = make_client()
    file = training_file(client)
    admin(latency={"seconds": 1.0, "routes": "^/v1/fine_tuning/jobs$", "methods": ["POST"]})

    with pytest.raises(openai.APITimeoutError):
        make_client(timeout=0.3).fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=file, metadata={"tunectl_job": "j-9"})

    assert [j.metadata for j in client.fine_tuning.jobs.list(metadata={"tunectl_job": "j-9"})] \
        == [{"tunectl_job": "j-9"}]


def test_error_classes(make_client: Callable[..., openai.OpenAI]) -> None:
    client = make_client()

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.AuthenticationError):
        make_client(api_key="sk-wrong").files.list()
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-missing")
    assert raised.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as raised:
        client.files.create(file=("notes.txt", b"hi"), purpose="fine-tune")
    assert raised.value.param == "file"


def test_the_webhooks_it_sends_are_what_the_official_sdk_verifies(
        client: openai.OpenAI, admin: Callable[..., None], base_url: str) -> None:
    """Each ended job (succeeded, failed, cancelled) sends one event that the SDK's
    webhooks.unwrap() accepts and that matches the spec's schema; a failed delivery is
    retried with the same webhook-id."""
    answers = [500]  # the first delivery fails; every later one succeeds

    def answer(received: Received) -> tuple[int, dict[str, str]]:
        return (answers.pop(0) if answers else 200), {}

    with Receiver(WEBHOOK_SECRET, respond=answer) as receiver:
        admin(webhooks={"url": receiver.url, "secret": WEBHOOK_SECRET})
        file = training_file(client)
        ended = {
            "succeeded": client.fine_tuning.jobs.create(model="gpt-4o-mini",
                                                        training_file=file).id,
            "failed": client.fine_tuning.jobs.create(
                model="gpt-4o-mini", training_file=file,
                metadata={"emulator_fail": "invalid_training_file"}).id,
            "cancelled": client.fine_tuning.jobs.create(
                model="gpt-4o-mini", training_file=file,
                metadata={"emulator_duration_s": "60"}).id,
        }
        client.fine_tuning.jobs.cancel(ended["cancelled"])
        deadline = time.monotonic() + 10
        while len({r.webhook_id for r in receiver.received}) < 3 or len(receiver.received) < 4:
            assert time.monotonic() < deadline, f"got {receiver.received}"
            time.sleep(0.05)

    received = receiver.received
    retried = received[0].webhook_id
    assert [r.webhook_id for r in received].count(retried) == 2
    with openai.OpenAI(api_key=API_KEY, base_url=f"{base_url}/v1",
                       webhook_secret=WEBHOOK_SECRET) as sdk:
        events = {}
        for request in received:
            event = sdk.webhooks.unwrap(request.body, request.headers)
            events[event.type] = event.data.id  # type: ignore[union-attr]
            schema = f"WebhookFineTuningJob{event.type.rsplit('.', 1)[1].capitalize()}"
            assert spec_schemas.validate(schema, json.loads(request.body)) == []
            assert request.headers["user-agent"].startswith("OpenAI/1.0")
            assert request.webhook_id.startswith("wh_")
    assert events == {f"fine_tuning.job.{k}": v for k, v in ended.items()}
    assert stats(base_url)["webhooks"] == {"queued": 0, "delivered": 3, "failed": 1}
    jobs = {j["id"]: j for j in httpx.get(f"{base_url}/_emulator/jobs").json()}
    assert all(jobs[job_id]["ended_at"] for job_id in ended.values())
