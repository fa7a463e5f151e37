"""deploy/: every file parses, every process it starts runs a Procfile line (or `db
upgrade`), those lines are commands the CLI accepts, and the compose and Kubernetes files
validate against their schemas, offline (any network access during validation fails)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import socket
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import sqlalchemy as sa
import typer
import yaml

from orchestrator.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MIGRATE = ["tunectl", "db", "upgrade"]
KUBERNETES_VERSION = "1.30"


def procfile() -> dict[str, list[str]]:
    lines = {}
    for raw in (ROOT / "Procfile").read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            name, _, command = raw.partition(":")
            lines[name.strip()] = shlex.split(command)
    return lines


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any attempt to open a network connection."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"validation tried the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def test_the_procfile_runs_the_api_the_scheduler_and_workers() -> None:
    assert set(procfile()) == {"api", "scheduler", "worker"}


@pytest.mark.parametrize("name", sorted(procfile()))
def test_each_procfile_command_is_one_the_cli_accepts(name: str) -> None:
    argv = procfile()[name]
    command: click.Group = typer.main.get_command(cli_app)  # type: ignore[assignment]

    assert argv[0] == "tunectl"
    sub = command.get_command(click.Context(command), argv[1])
    assert sub is not None, f"tunectl has no command {argv[1]!r}"
    sub.make_context(argv[1], argv[2:])  # raises on an unknown option or a bad value


def tunectl_commands(argvs: list[list[str]]) -> None:
    allowed = [*procfile().values(), MIGRATE]
    for argv in argvs:
        assert argv in allowed, f"{shlex.join(argv)} is not a Procfile line"


def test_the_dockerfile_runs_tunectl_and_defaults_to_the_api() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]

    assert entrypoint == ["tunectl"]
    assert [*entrypoint, *cmd] == procfile()["api"]


def test_compose_validates_and_runs_the_procfile(offline: None) -> None:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor")
                         / "compose-spec.json").read_text())
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(doc)

    services = doc["services"]
    tunectl = {name: s for name, s in services.items() if s.get("image") == "tunectl:latest"}
    tunectl_commands([["tunectl", *s["command"]] for s in tunectl.values()])
    kinds = [s["command"][0] for s in tunectl.values()]
    assert sorted(kinds) == ["api", "db", "scheduler", "worker", "worker"]
    assert {"postgres", "redis", "grafana"} <= set(services)


def test_a_broken_compose_file_fails_validation() -> None:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor")
                         / "compose-spec.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"api": {"image": "x", "comand": ["api"]}}}, schema)


def kubernetes_documents() -> list[dict[str, Any]]:
    return [d for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_kubernetes_manifests_validate_and_run_the_procfile(offline: None) -> None:
    documents = kubernetes_documents()
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    containers = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"]
                  for d in documents if d["kind"] in ("Deployment", "Job")}
    tunectl_commands([c["command"] for cs in containers.values() for c in cs])
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"]
                for d in documents if d["kind"] == "Deployment"}
    assert replicas == {"tunectl-api": 2, "tunectl-scheduler": 1, "tunectl-worker": 2}


def test_a_broken_manifest_fails_validation() -> None:
    deployment = next(d for d in kubernetes_documents() if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_systemd_units_run_the_procfile() -> None:
    argvs = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(strict=True, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(unit)
        assert {"Unit", "Service", "Install"} <= set(parser.sections()), unit.name
        exec_start = shlex.split(parser["Service"]["ExecStart"])
        argvs.append([Path(exec_start[0]).name, *exec_start[1:]])
    tunectl_commands(argvs)
    assert len(argvs) == 3


def test_the_grafana_dashboard_queries_run_on_the_views(engine: sa.Engine) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "tunectl.json").read_text())
    queries = [t["rawSql"] for p in dashboard["panels"] for t in p["targets"]]
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1

    assert len(queries) == 8
    with engine.connect() as conn:
        for sql in queries:
            conn.execute(sa.text(sql)).all()
