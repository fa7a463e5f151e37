"""Migrations: head matches the models on this stack's database, and the daemon refuses a
database that is not at head."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from orchestrator.db.engine import check_migrated, make_engine
from orchestrator.db.migrate import alembic_config, current_revision, head_revision
from orchestrator.errors import DatabaseNotMigrated


def test_upgrade_head_leaves_nothing_for_autogenerate(engine: sa.Engine) -> None:
    assert current_revision(engine) == head_revision()
    command.check(alembic_config(engine))  # raises if the models and the schema differ


def test_an_unmigrated_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(DatabaseNotMigrated, match=r"not initialised.*run `tunectl db upgrade`"):
        check_migrated(engine)
    engine.dispose()


def test_a_migrated_database_passes(engine: sa.Engine) -> None:
    check_migrated(engine)


@pytest.mark.postgres
def test_upgrades_run_at_once_on_many_machines_all_succeed(tmp_path: Path) -> None:
    """systemd runs tunectl-migrate on every host at boot: without a lock the second
    `tunectl db upgrade` fails on the tables the first is creating (and its host's units
    with it). Separate processes, as hosts are (Alembic's context is per process)."""
    import os
    import subprocess
    import sys
    import uuid

    from tests.conftest import PG_ADMIN_URL

    name = f"tunectl_upgrade_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
    env = {**os.environ, "TUNECTL_DATABASE_URL": url, "TUNECTL_DATA_DIR": str(tmp_path)}
    try:
        hosts = [subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "db", "upgrade"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(3)]
        outputs = [host.communicate(timeout=120)[0].decode() for host in hosts]
        engine = make_engine(url)
        assert [host.returncode for host in hosts] == [0, 0, 0], outputs
        assert current_revision(engine) == head_revision()
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_the_migration_checks_failure_kinds_as_the_models_do() -> None:
    """The migration keeps its own frozen copy of the CHECKs; today they must agree."""
    from importlib import import_module

    from orchestrator.db.models import FAILURE_KIND_CHECKS

    migration = import_module("orchestrator.db.migrations.versions.0006_projects_and_views")
    assert migration.FAILURE_KIND_CHECKS == FAILURE_KIND_CHECKS
