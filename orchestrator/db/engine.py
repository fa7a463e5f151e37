"""Engines and sessions, tuned per dialect, and the guard that refuses an un-migrated database.

SQLite (the embedded default) is opened in WAL mode and every transaction starts with
``BEGIN IMMEDIATE``, so that concurrent writers wait on ``busy_timeout`` instead of failing
with "database is locked" halfway through a read-then-write.

PostgreSQL connections are not pinged before each use (that would add a round trip to
every transaction); instead the first statement to meet a dead connection invalidates the
whole pool, and ``retry_on_disconnect`` runs that transaction again on a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlmodel import Session

from orchestrator.errors import DatabaseNotMigrated

T = TypeVar("T")


def make_engine(url: str) -> sa.Engine:
    """Create an engine for ``url`` with tunectl's per-dialect settings."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        _tune_sqlite(engine)
        return engine
    return sa.create_engine(url, pool_size=5, max_overflow=10)


def _tune_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # SQLAlchemy emits BEGIN itself (see "begin" below)
        cursor = dbapi.cursor()
        for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON",
                       "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def retry_on_disconnect(transaction: Callable[[], T]) -> T:
    """Run a whole ``transaction``; if its connection turned out dead (a restarted server),
    run it once more on a fresh connection."""
    try:
        return transaction()
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return transaction()


@lru_cache(maxsize=4)
def get_engine(url: str) -> sa.Engine:
    """One engine per URL per process."""
    return make_engine(url)


@contextmanager
def session_scope(engine: sa.Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def check_migrated(engine: sa.Engine) -> None:
    """Raise DatabaseNotMigrated unless the schema is at the code's head revision."""
    from orchestrator.db.migrate import current_revision, head_revision

    current, head = current_revision(engine), head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        at = f"at revision {current}" if current else "not initialised"
        raise DatabaseNotMigrated(
            f"database {where} is {at}, this tunectl needs {head}: run `tunectl db upgrade`"
        )
