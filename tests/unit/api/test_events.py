"""GET /v1/jobs/{id}/events asks the provider with the server's key, so it is bounded: a
short timeout, an answer kept a few seconds per job, and a cap on concurrent fetches that
answers 503 with Retry-After instead of queueing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.api.events import ProviderEvents
from orchestrator.config import Settings
from orchestrator.providers.http import set_shared_client
from tests.unit.api.conftest import auth, submit


class Provider:
    """OpenAI's events route, recording each call; ``handle`` may be replaced."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []
        self.handle: Callable[[httpx.Request], httpx.Response] = lambda _: httpx.Response(
            200, json={"data": [{"created_at": 1, "level": "info", "message": "step 1"}],
                       "has_more": False})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        return self.handle(request)


@pytest.fixture
def provider() -> Iterator[Provider]:
    fake = Provider()
    set_shared_client(httpx.Client(transport=httpx.MockTransport(fake)))
    yield fake
    set_shared_client(None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(api_settings: Settings, engine: sa.Engine, clock: Clock) -> FastAPI:
    settings = api_settings.model_copy(update={"api_events_concurrency": 1})
    app = create_app(settings, engine)
    app.state.api.events = ProviderEvents(settings, clock=clock)
    return app


def training_job(client: TestClient, engine: sa.Engine, tmp_path: Path) -> str:
    """A job of alpha's whose provider job exists."""
    job_id = str(submit(client, "alpha", tmp_path)["id"])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET provider_job_id = 'ftjob-1' WHERE id = :id"),
                     {"id": job_id})
    return job_id


def test_the_provider_is_asked_with_a_short_timeout(
        app: FastAPI, engine: sa.Engine, provider: Provider, tmp_path: Path) -> None:
    with TestClient(app) as client:
        job_id = training_job(client, engine, tmp_path)
        events = client.get(f"/v1/jobs/{job_id}/events", headers=auth("alpha"))

    assert events.status_code == 200 and events.json()[0]["message"] == "step 1"
    timeout: dict[str, Any] = provider.calls[0].extensions["timeout"]
    assert set(timeout.values()) == {5.0}  # api_events_timeout_s, not the client's 60 s


def test_an_answer_is_kept_a_few_seconds_per_job(
        app: FastAPI, engine: sa.Engine, provider: Provider, clock: Clock,
        tmp_path: Path) -> None:
    with TestClient(app) as client:
        job_id = training_job(client, engine, tmp_path)
        url = f"/v1/jobs/{job_id}/events"
        first = [client.get(url, headers=auth("alpha")).json() for _ in range(5)]
        clock.now += 5.1
        later = client.get(url, headers=auth("alpha"))

    assert len(provider.calls) == 2  # five requests within api_events_cache_s, one after
    assert first == [first[0]] * 5 and later.status_code == 200


def test_a_provider_error_is_kept_too(
        app: FastAPI, engine: sa.Engine, provider: Provider, tmp_path: Path) -> None:
    provider.handle = lambda _: httpx.Response(429, json={"error": {"message": "slow down"}})
    with TestClient(app) as client:
        job_id = training_job(client, engine, tmp_path)
        answers = [client.get(f"/v1/jobs/{job_id}/events", headers=auth("alpha"))
                   for _ in range(3)]

    assert [a.status_code for a in answers] == [502] * 3
    assert len(provider.calls) == 1 and "slow down" in answers[2].json()["detail"]


def test_one_fetch_too_many_is_a_503_with_retry_after(
        app: FastAPI, engine: sa.Engine, provider: Provider, tmp_path: Path) -> None:
    """With api_events_concurrency 1, a second fetch while the first waits on the
    provider is refused at once rather than queued on the threadpool."""
    entered, release = threading.Event(), threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(10)
        return httpx.Response(200, json={"data": [], "has_more": False})

    provider.handle = slow
    with TestClient(app) as client:
        first_job = training_job(client, engine, tmp_path)
        other_job = training_job(client, engine, tmp_path)
        answers: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: answers.append(client.get(
            f"/v1/jobs/{first_job}/events", headers=auth("alpha"))))
        waiting.start()
        assert entered.wait(10)
        refused = client.get(f"/v1/jobs/{other_job}/events", headers=auth("alpha"))
        release.set()
        waiting.join(10)

    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "too many provider event requests" in refused.json()["detail"]
    assert [a.status_code for a in answers] == [200] and len(provider.calls) == 1
