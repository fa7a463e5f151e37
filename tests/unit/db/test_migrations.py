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
