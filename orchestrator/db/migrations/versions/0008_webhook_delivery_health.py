"""The webhook delivery health view: per endpoint, its events by status, its attempts by
outcome, their latency, and what it last answered (docs/dashboards.md). As with 0006's
views, a later batch-mode change of a table under it on SQLite must drop it first and
create it again after.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: Per dialect: seconds from ``a`` to now, and whether ``a`` is within the last day.
_DIALECT = {
    "postgresql": {
        "age": "EXTRACT(EPOCH FROM now() - ({a}))::float8",
        "last_day": "({a}) >= now() - INTERVAL '1 day'",
    },
    "sqlite": {
        "age": "(julianday('now') - julianday({a})) * 86400.0",
        "last_day": "julianday({a}) >= julianday('now') - 1",
    },
}


def views(dialect: str) -> dict[str, str]:
    """The view's SELECT, by name."""
    d = _DIALECT[dialect]
    recent = d["last_day"].format(a="started_at")
    return {
        # Latency percentiles are nearest rank over the attempts that got an answer, as in
        # state_time_percentiles; "last" is the newest attempt.
        "webhook_delivery_health": f"""
            SELECT e.id AS endpoint_id, e.url, e.state, e.disabled_at, e.disabled_reason,
                   COALESCE(d.pending, 0) AS events_pending,
                   COALESCE(d.delivered, 0) AS events_delivered,
                   COALESCE(d.dead, 0) AS events_dead,
                   d.oldest_pending_at,
                   {d["age"].format(a="d.oldest_pending_at")} AS oldest_pending_age_s,
                   COALESCE(a.attempts, 0) AS attempts,
                   COALESCE(a.delivered, 0) AS attempts_delivered,
                   COALESCE(a.failed, 0) AS attempts_failed,
                   COALESCE(a.refused, 0) AS attempts_refused,
                   COALESCE(a.attempts_24h, 0) AS attempts_24h,
                   COALESCE(a.failures_24h, 0) AS failures_24h,
                   a.p50_latency_ms, a.p95_latency_ms,
                   a.last_attempt_at, a.last_outcome, a.last_status_code, a.last_error,
                   a.last_delivered_at
            FROM webhook_endpoints e
            LEFT JOIN (
                SELECT endpoint_id,
                       SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending,
                       SUM(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END) AS delivered,
                       SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) AS dead,
                       MIN(CASE WHEN status = 'pending' THEN created_at END) AS oldest_pending_at
                FROM webhook_deliveries GROUP BY endpoint_id) d ON d.endpoint_id = e.id
            LEFT JOIN (
                SELECT endpoint_id, COUNT(*) AS attempts,
                       SUM(CASE WHEN outcome = 'delivered' THEN 1 ELSE 0 END) AS delivered,
                       SUM(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END) AS failed,
                       SUM(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END) AS refused,
                       SUM(CASE WHEN {recent} THEN 1 ELSE 0 END) AS attempts_24h,
                       SUM(CASE WHEN {recent} AND outcome <> 'delivered' THEN 1 ELSE 0 END)
                           AS failures_24h,
                       MIN(CASE WHEN share >= 0.5 THEN latency_ms END) AS p50_latency_ms,
                       MIN(CASE WHEN share >= 0.95 THEN latency_ms END) AS p95_latency_ms,
                       MAX(started_at) AS last_attempt_at,
                       MAX(CASE WHEN newest = 1 THEN outcome END) AS last_outcome,
                       MAX(CASE WHEN newest = 1 THEN status_code END) AS last_status_code,
                       MAX(CASE WHEN newest = 1 THEN error END) AS last_error,
                       MAX(CASE WHEN outcome = 'delivered' THEN finished_at END)
                           AS last_delivered_at
                FROM (SELECT endpoint_id, outcome, status_code, latency_ms, error,
                             started_at, finished_at,
                             ROW_NUMBER() OVER (PARTITION BY endpoint_id
                                                ORDER BY started_at DESC, id DESC) AS newest,
                             CUME_DIST() OVER (PARTITION BY endpoint_id, latency_ms IS NULL
                                               ORDER BY latency_ms) AS share
                      FROM webhook_attempts) w
                GROUP BY endpoint_id) a ON a.endpoint_id = e.id
        """,
    }


def upgrade() -> None:
    for name, select in views(op.get_bind().dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    for name in views(op.get_bind().dialect.name):
        op.execute(f"DROP VIEW {name}")
