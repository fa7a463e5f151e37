"""A token sees and touches only its own project's jobs: every job route answers another
project's job exactly as a missing one (404) and changes nothing; no token, or a wrong
one, is 401 on every route that needs one; an admin token sees every project."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.unit.api.conftest import SPEC, auth, submit

#: Every route that names a job: (method, path template).
JOB_ROUTES = [("GET", "/v1/jobs/{id}"), ("GET", "/v1/jobs/{id}/history"),
              ("GET", "/v1/jobs/{id}/events"), ("POST", "/v1/jobs/{id}/cancel")]
#: Every route that needs a token.
GUARDED = [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("POST", "/v1/datasets"),
           ("GET", "/metrics"), *JOB_ROUTES]


@pytest.fixture
def alphas_job(client: TestClient, tmp_path: Path) -> str:
    return str(submit(client, "alpha", tmp_path)["id"])


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES,
                         ids=[f"{m} {p}" for m, p in JOB_ROUTES])
def test_another_projects_job_is_not_found_and_untouched(
        client: TestClient, alphas_job: str, engine: sa.Engine, method: str,
        path: str) -> None:
    response = client.request(method, path.format(id=alphas_job), headers=auth("beta"))
    missing = client.request(method, path.format(id="job_missing"), headers=auth("beta"))

    assert response.status_code == 404
    assert response.json() == {"detail": missing.json()["detail"].replace(
        "job_missing", alphas_job)}
    with engine.connect() as conn:
        state, version = conn.execute(sa.text("SELECT state, version FROM jobs WHERE id = :i"),
                                      {"i": alphas_job}).one()
    assert (state, version) == ("queued", 1)
    assert client.request(method, path.format(id=alphas_job),
                          headers=auth("alpha")).status_code == 200


def test_a_list_shows_only_the_tokens_project(client: TestClient, alphas_job: str,
                                              tmp_path: Path) -> None:
    betas = str(submit(client, "beta", tmp_path, name="b")["id"])

    def listed(who: str, **params: str) -> list[str]:
        response = client.get("/v1/jobs", headers=auth(who), params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["jobs"]]

    assert listed("alpha") == [alphas_job]
    assert listed("beta") == [betas]
    assert client.get("/v1/jobs", headers=auth("beta"),
                      params={"project": "alpha"}).status_code == 403
    assert listed("ops") == [betas, alphas_job]
    assert listed("ops", project="alpha") == [alphas_job]


def test_an_admin_token_reads_and_cancels_any_projects_job(client: TestClient,
                                                           alphas_job: str) -> None:
    assert client.get(f"/v1/jobs/{alphas_job}", headers=auth("ops")).status_code == 200
    cancelled = client.post(f"/v1/jobs/{alphas_job}/cancel", headers=auth("ops"))
    assert cancelled.json()["state"] == "cancelled"


def test_a_project_cannot_use_another_projects_dataset(client: TestClient) -> None:
    uploaded = client.post("/v1/datasets", headers=auth("alpha"), content=b'{"a": 1}\n')
    reference = uploaded.json()["reference"]

    response = client.post("/v1/jobs", headers=auth("beta"),
                           json={**SPEC, "training_file": reference})
    assert response.status_code == 400
    assert f"no dataset {reference} is stored for this project" in response.json()["detail"]


def test_idempotency_keys_are_per_project(client: TestClient, tmp_path: Path) -> None:
    alpha = submit(client, "alpha", tmp_path, idempotency_key="same")
    beta = submit(client, "beta", tmp_path, idempotency_key="same", suffix="other")

    assert alpha["id"] != beta["id"] and alpha["created"] and beta["created"]


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
@pytest.mark.parametrize("header", [None, "Bearer tcl_not-a-configured-token", "Basic abc"],
                         ids=["no token", "unknown token", "not a bearer token"])
def test_a_request_without_a_valid_token_is_401(client: TestClient, method: str, path: str,
                                                header: str | None) -> None:
    headers = {"authorization": header} if header else {}
    response = client.request(method, path.format(id="job_x"), headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "a valid API token is required" in response.json()["detail"]


def test_the_401_names_the_command_that_makes_a_token(client: TestClient) -> None:
    import re

    import click
    import typer

    from orchestrator.cli import app

    detail = client.get("/v1/jobs").json()["detail"]
    named = re.search(r"`tunectl ([\w-]+)` makes one", detail)
    command: click.Group = typer.main.get_command(app)  # type: ignore[assignment]

    assert named is not None
    assert command.get_command(click.Context(command), named.group(1)) is not None
