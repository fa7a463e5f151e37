"""`tunectl … --api URL`: the CLI talks to a real API server (uvicorn on loopback) and
prints what the local CLI prints; refusals are the same one line with exit status 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from tests.helpers import serve_in_thread
from tests.unit.api.conftest import TOKENS
from tests.unit.test_cli import spec_file, tunectl


@pytest.fixture
def api_url(api_settings: Settings, engine: sa.Engine) -> Iterator[str]:
    with serve_in_thread(create_app(api_settings, engine)) as url:
        yield url


@pytest.fixture
def remote(env: dict[str, str], api_url: str, database_url: str,
           monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's environment: the API's token, and the same database for local commands."""
    monkeypatch.setenv("TUNECTL_API_TOKEN", TOKENS["alpha"])
    monkeypatch.setenv("TUNECTL_DATABASE_URL", database_url)
    return api_url


def test_submit_jobs_show_cancel_over_the_api_match_the_local_cli(
        remote: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(spec_file(tmp_path))

    code, out, err = tunectl(capsys, "submit", spec, "--json", "--api", remote)
    assert code == 0, err
    first = json.loads(out)
    again = json.loads(tunectl(capsys, "submit", spec, "--json", "--api", remote)[1])
    listed = json.loads(tunectl(capsys, "jobs", "--json", "--label", "x=y", "--api", remote)[1])
    remote_show = json.loads(tunectl(capsys, "show", first["id"], "--json", "--api",
                                     remote)[1])
    local_show = json.loads(tunectl(capsys, "show", first["id"], "--json")[1])

    assert first["project"] == "alpha" and first["created"] and not again["created"]
    assert listed == []
    assert json.loads(tunectl(capsys, "jobs", "--json", "--api", remote)[1])[0]["id"] == \
        first["id"]
    assert remote_show == local_show
    assert tunectl(capsys, "cancel", first["id"], "--api", remote)[1].strip() == \
        f"{first['id']}: cancelled"
    assert "cancelled" in tunectl(capsys, "show", first["id"], "--api", remote)[1]


def test_refusals_over_the_api_are_one_line_with_exit_status_2(
        remote: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tunectl(capsys, "show", "job_nope", "--api", remote)
    monkeypatch.setenv("TUNECTL_API_TOKEN", "tcl_wrong-token-123456")
    refused = tunectl(capsys, "jobs", "--api", remote)
    down = tunectl(capsys, "jobs", "--api", "http://127.0.0.1:1")

    assert missing[0] == 2
    assert missing[2] == "error: no job 'job_nope'; `tunectl jobs` lists the jobs\n"
    assert refused[0] == 2 and refused[2].startswith(
        f"error: the API at {remote} refused the token: a valid API token is required")
    assert down[0] == 2 and "cannot reach the API at http://127.0.0.1:1" in down[2]
    assert all(len(r[2].splitlines()) == 1 for r in (missing, refused, down))


def test_api_token_prints_a_token_and_the_hash_to_configure(
        env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.api.auth import hash_token

    code, out, _ = tunectl(capsys, "api-token", "--project", "team-a", "--admin")
    token = out.splitlines()[0].removeprefix("token: ")
    entry = json.loads(out.splitlines()[1].removeprefix("TUNECTL_API_TOKENS entry: "))

    assert code == 0 and token.startswith("tcl_") and len(token) > 40
    assert entry == {"name": "team-a", "project": "team-a", "sha256": hash_token(token),
                     "admin": True}
    assert tunectl(capsys, "api-token", "--project", "Bad Name")[0] == 2
