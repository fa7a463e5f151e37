"""Alembic environment: runs against the engine tunectl passes in (never a URL from a file)."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import orchestrator.db.models  # noqa: F401  (registers the tables)
from orchestrator.db.types import TZDateTime


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render tunectl's column types as plain SQLAlchemy, so migrations never import app code."""
    if type_ != "type":
        return False
    if isinstance(obj, TZDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, sa.JSON):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return "sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')"
    if type(obj).__name__ == "AutoString":
        length = getattr(obj, "length", None)
        return f"sa.String(length={length})" if length else "sa.String()"
    return False


def _foreign_keys(connection: sa.Connection, on: bool) -> None:
    """Switch SQLite's foreign-key enforcement, outside any transaction (inside one it is a
    no-op). Batch migrations copy a table to change it; dropping the old copy must not trip
    the foreign keys of the tables that point at it (SQLite's own recipe for such changes)."""
    raw: Any = connection.connection.driver_connection
    raw.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")


#: The advisory lock `tunectl db upgrade` holds on PostgreSQL ("tunectl" in ASCII).
_UPGRADE_LOCK = 0x74756E6563746C

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _foreign_keys(connection, on=False)
    try:
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # Every machine may run `tunectl db upgrade` at once (a systemd unit per
                # host): the second waits here, then finds the schema at head. SQLite's
                # BEGIN IMMEDIATE serializes them already.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")
            context.configure(
                connection=connection,
                target_metadata=SQLModel.metadata,
                render_as_batch=True,
                compare_type=True,
                render_item=render_item,
            )
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            _foreign_keys(connection, on=True)
