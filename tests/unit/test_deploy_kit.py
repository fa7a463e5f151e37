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

from orchestrator import __version__
from orchestrator.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MIGRATE = ["tunectl", "db", "upgrade"]
KUBERNETES_VERSION = "1.30"
#: The one image every file runs (docs/deploy.md builds it; the tag is tunectl's version).
IMAGE = f"registry.internal/tunectl:{__version__}"


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


def test_the_image_creates_every_volume_it_is_given_owned_by_its_user() -> None:
    """Docker creates a missing mount point root-owned: uid 10001 could not write there."""
    text = (DEPLOY / "Dockerfile").read_text()
    before_user = text[:text.index("\nUSER tunectl")]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1] for s in compose["services"].values() if s.get("image") == IMAGE
              for v in s.get("volumes", [])}

    assert mounts == {"/var/lib/tunectl/blobs"}
    for mount in mounts:
        assert re.search(rf"^RUN mkdir -p {mount} && chown -R tunectl:tunectl "
                         rf"{Path(mount).parent}$", before_user, re.M), mount


def test_every_file_runs_one_image_the_docs_build() -> None:
    build = re.search(r"docker build -f deploy/Dockerfile -t (\S+) \.",
                      (ROOT / "docs" / "deploy.md").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    images = {s["image"] for s in compose["services"].values() if "build" in s}
    images |= {c["image"] for d in kubernetes_documents() if d["kind"] in ("Deployment", "Job")
               for c in d["spec"]["template"]["spec"]["containers"]}

    assert build is not None and images == {build.group(1)} == {IMAGE}
    assert IMAGE in (DEPLOY / "Dockerfile").read_text()


def test_compose_validates_and_runs_the_procfile(offline: None) -> None:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor")
                         / "compose-spec.json").read_text())
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(doc)

    services = doc["services"]
    tunectl = {name: s for name, s in services.items() if s.get("image") == IMAGE}
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
    """What `kubectl apply -f deploy/kubernetes/` applies: its own files, not examples/."""
    return [d for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]


def secret_example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "kubernetes" / "examples" / "secret.example.yaml").read_text())
    return doc


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


def test_applying_the_manifests_never_overwrites_the_secret(offline: None) -> None:
    """The Secret is the operator's: the applied set holds none, only the example does,
    and it has every key the pods read (files under /run/secrets/tunectl, secretKeyRefs)."""
    documents = kubernetes_documents()
    example = secret_example()
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    files = {Path(v).name for k, v in config.items() if k.endswith("_FILE")}
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for d in documents
            if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}

    assert [d["kind"] for d in documents if d["kind"] == "Secret"] == []
    assert files | refs <= set(example["stringData"])
    assert files >= {"database-url", "broker-url"}  # passwords: never in the ConfigMap
    assert not {"TUNECTL_DATABASE_URL", "TUNECTL_BROKER_URL"} & set(config)
    for d in documents:
        if d["kind"] in ("Deployment", "Job"):
            volumes = d["spec"]["template"]["spec"]["volumes"]
            assert {"name": "keys", "secret": {"secretName": example["metadata"]["name"]}} \
                in volumes, d["metadata"]["name"]


def test_the_migrate_job_can_be_applied_again_next_release() -> None:
    """A Job's template is immutable: it must be gone before a new image is applied."""
    job = next(d for d in kubernetes_documents() if d["kind"] == "Job")
    assert job["spec"]["ttlSecondsAfterFinished"] <= 3600
    assert "kubectl delete job tunectl-db-upgrade" in (ROOT / "docs" / "deploy.md").read_text()


def test_prometheus_scrapes_only_pods_whose_metrics_need_no_token() -> None:
    """The API's /metrics needs the admin token and reports the same fleet from every
    replica: it is scraped through its Service (docs/metrics.md), not by annotation."""
    config = next(d for d in kubernetes_documents() if d["kind"] == "ConfigMap")["data"]
    annotated = {}
    for d in kubernetes_documents():
        if d["kind"] == "Deployment":
            annotations = d["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/scrape") == "true":
                ports = {p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"]
                         for p in c["ports"]}
                assert int(annotations["prometheus.io/port"]) in ports
                annotated[d["metadata"]["name"]] = annotations["prometheus.io/port"]

    assert annotated == {"tunectl-scheduler": config["TUNECTL_METRICS_PORT"],
                         "tunectl-worker": config["TUNECTL_METRICS_PORT"]}


def test_a_broken_manifest_fails_validation() -> None:
    deployment = next(d for d in kubernetes_documents() if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def systemd_units() -> dict[str, configparser.ConfigParser]:
    units = {}
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(strict=True, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(unit)
        units[unit.name] = parser
    return units


def test_the_systemd_units_run_the_procfile_after_migrating() -> None:
    argvs = []
    units = systemd_units()
    for name, unit in units.items():
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        exec_start = shlex.split(unit["Service"]["ExecStart"])
        argvs.append([Path(exec_start[0]).name, *exec_start[1:]])
        if name != "tunectl-migrate.service":
            # Requires= without After= would start both at once.
            assert "tunectl-migrate.service" in unit["Unit"]["Requires"].split(), name
            assert "tunectl-migrate.service" in unit["Unit"]["After"].split(), name
    tunectl_commands(argvs)
    assert len(argvs) == 4
    migrate = units["tunectl-migrate.service"]["Service"]
    assert (migrate["Type"], migrate["RemainAfterExit"]) == ("oneshot", "yes")
    assert shlex.split(migrate["ExecStart"])[1:] == MIGRATE[1:]


def test_two_workers_on_one_host_serve_metrics_on_their_own_ports() -> None:
    """A shared TUNECTL_METRICS_PORT made the second worker crash-loop (address in use)."""
    worker = systemd_units()["tunectl-worker@.service"]["Service"]
    ports = {instance: dict(line.split("=", 1) for line in shlex.split(
        worker["Environment"].replace("%i", instance)))["TUNECTL_METRICS_PORT"]
        for instance in ("9101", "9102")}
    env_file = (DEPLOY / "systemd" / "env.example").read_text()

    assert ports == {"9101": "9101", "9102": "9102"}
    # A variable from an EnvironmentFile would override every instance's Environment=.
    assert not re.search(r"^\s*TUNECTL_METRICS_PORT=", env_file, re.M)
    assert "tunectl-worker@9101" in (ROOT / "docs" / "deploy.md").read_text()


def test_the_grafana_dashboard_queries_run_on_the_views(engine: sa.Engine) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "tunectl.json").read_text())
    queries = [t["rawSql"] for p in dashboard["panels"] for t in p["targets"]]
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1

    assert len(queries) == 9
    with engine.connect() as conn:
        for sql in queries:
            conn.execute(sa.text(sql)).all()
