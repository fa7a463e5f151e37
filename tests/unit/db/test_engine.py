"""Engine behaviour per dialect: a restarted PostgreSQL costs one retried transaction."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from orchestrator.db.engine import make_engine, retry_on_disconnect


@pytest.mark.postgres
def test_a_dead_connection_is_replaced_and_the_transaction_run_again(
        database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as conn:  # leave one pooled connection behind
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    killer = make_engine(database_url)
    with killer.begin() as conn:  # what a server restart does to that connection
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    runs: list[int] = []

    def transaction() -> int:
        runs.append(1)
        with engine.begin() as conn:
            return int(conn.exec_driver_sql("SELECT 42").scalar_one())

    assert retry_on_disconnect(transaction) == 42
    assert len(runs) == 2
    engine.dispose()
    killer.dispose()


def test_other_database_errors_are_not_retried(engine: sa.Engine) -> None:
    runs: list[int] = []

    def transaction() -> None:
        runs.append(1)
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT * FROM no_such_table")

    with pytest.raises(sa.exc.DBAPIError):
        retry_on_disconnect(transaction)
    assert len(runs) == 1
