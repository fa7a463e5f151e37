"""Projects and dashboards: jobs.project (idempotency keys become per project),
jobs.failure_kind (why a failed job failed, as a stable class), the datasets each project
uploaded through the API, and the SQL views ops dashboards read.

The views are written once per dialect only where the dialects differ (seconds between two
times, reading a JSON field, the current time); docs/dashboards.md documents each one, and
tests/unit/db/test_views.py checks their figures on both dialects. A later migration that
changes ``jobs`` in batch mode on SQLite (a table copy) must drop the views first and
create them again after: SQLite refuses to rename a table into place under a view.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LIVE = "('creating', 'deploying', 'running', 'deleting')"
#: jobs.failure_kind's CHECKs as this revision creates them (models.FAILURE_KIND_CHECKS).
FAILURE_KIND_CHECKS = {
    "failure_kind_known": "failure_kind IS NULL OR failure_kind IN ('dataset', 'spec', "
                          "'missing_credential', 'provider_auth', 'provider_rejected', "
                          "'provider_failed_job', 'gave_up', 'deployment_failed', "
                          "'unclassified')",
    "failed_has_kind": "(state = 'failed') = (failure_kind IS NOT NULL)",
}
TERMINAL = "('succeeded', 'failed', 'cancelled')"

#: Per dialect: seconds from a to b, a JSON number field of jobs.dataset, and now.
_DIALECT = {
    "postgresql": {
        "seconds": "EXTRACT(EPOCH FROM ({b}) - ({a}))::float8",
        "cost": "(dataset ->> 'estimated_cost_usd')::float8",
        "now": "now()",
    },
    "sqlite": {
        "seconds": "(julianday({b}) - julianday({a})) * 86400.0",
        "cost": "json_extract(dataset, '$.estimated_cost_usd')",
        "now": "'now'",
    },
}


def views(dialect: str) -> dict[str, str]:
    """Every view's SELECT, by name, in creation order (later ones read earlier ones)."""
    d = _DIALECT[dialect]

    def seconds(a: str, b: str) -> str:
        return d["seconds"].format(a=a, b=b)

    return {
        # Jobs by project, provider and state.
        "jobs_by_state": """
            SELECT project, provider, state, COUNT(*) AS jobs
            FROM jobs GROUP BY project, provider, state
        """,
        # Seconds each job spent in each non-terminal state it has left (a state entered
        # twice, or re-entered on a provider status change, counts once, summed).
        "job_state_durations": f"""
            SELECT t.job_id, j.project, j.provider, j.base_model, t.to_state AS state,
                   SUM({seconds("t.at", "t.next_at")}) AS seconds
            FROM (SELECT job_id, to_state, at,
                         LEAD(at) OVER (PARTITION BY job_id ORDER BY seq) AS next_at
                  FROM job_transitions) t
            JOIN jobs j ON j.id = t.job_id
            WHERE t.next_at IS NOT NULL AND t.to_state NOT IN {TERMINAL}
            GROUP BY t.job_id, j.project, j.provider, j.base_model, t.to_state
        """,
        # Time in each state per provider and base model: nearest-rank p50 and p95 (the
        # smallest duration at or above that share of jobs; the same on both dialects).
        "state_time_percentiles": """
            SELECT provider, base_model, state, COUNT(*) AS jobs,
                   MIN(CASE WHEN share >= 0.5 THEN seconds END) AS p50_s,
                   MIN(CASE WHEN share >= 0.95 THEN seconds END) AS p95_s
            FROM (SELECT provider, base_model, state, seconds,
                         CUME_DIST() OVER (PARTITION BY provider, base_model, state
                                           ORDER BY seconds) AS share
                  FROM job_state_durations) d
            GROUP BY provider, base_model, state
        """,
        # Why jobs failed: by project, provider and failure kind (jobs.error embeds request
        # ids and job-specific text, so it groups nothing), with the newest one's reason.
        "failure_reasons": """
            SELECT project, provider, failure_kind, COUNT(*) AS jobs,
                   MAX(finished_at) AS last_failed_at,
                   MAX(CASE WHEN newest = 1 THEN error END) AS example_reason
            FROM (SELECT project, provider, failure_kind, finished_at, error,
                         ROW_NUMBER() OVER (PARTITION BY project, provider, failure_kind
                                            ORDER BY finished_at DESC, id DESC) AS newest
                  FROM jobs WHERE state = 'failed') f
            GROUP BY project, provider, failure_kind
        """,
        # Deployments that exist (and bill) at their provider, with their age.
        "deployments_up": f"""
            SELECT d.id, d.job_id, j.project, d.provider, d.model, d.deployed_model, d.state,
                   d.capacity, d.created_at, d.ready_at, d.expires_at,
                   {seconds("d.created_at", d["now"])} AS age_s
            FROM deployments d JOIN jobs j ON j.id = d.job_id
            WHERE d.state IN {LIVE}
        """,
        # Estimated training spend per project: jobs whose provider job was created, and the
        # sum of their validate-step estimates (jobs_unpriced: no price known for the model).
        "spend_by_project": f"""
            SELECT project, provider, COUNT(*) AS jobs_trained,
                   COALESCE(SUM({d["cost"]}), 0) AS estimated_usd,
                   SUM(CASE WHEN {d["cost"]} IS NULL THEN 1 ELSE 0 END) AS jobs_unpriced
            FROM jobs WHERE provider_job_id IS NOT NULL
            GROUP BY project, provider
        """,
    }


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project", sa.String(length=64), nullable=False,
                                      server_default="default"))
        batch_op.drop_constraint(op.f("uq_jobs_idempotency_key"), type_="unique")
        batch_op.create_unique_constraint(
            op.f("uq_jobs_project_idempotency_key"), ["project", "idempotency_key"])
        batch_op.create_index("ix_jobs_project_created", ["project", "created_at", "id"],
                              unique=False)
        batch_op.add_column(sa.Column("failure_kind", sa.String(length=30), nullable=True))
    # Jobs that failed before failure kinds were recorded.
    op.execute("UPDATE jobs SET failure_kind = 'unclassified' WHERE state = 'failed'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # The model sets the value on every insert; the default only filled existing rows.
        batch_op.alter_column("project", server_default=None)
        for name, condition in FAILURE_KIND_CHECKS.items():
            batch_op.create_check_constraint(op.f(f"ck_jobs_{name}"), condition)

    op.create_table(
        "uploaded_datasets",
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "sha256", name=op.f("pk_uploaded_datasets")),
    )
    for name, select in views(op.get_bind().dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    for name in reversed(views(op.get_bind().dialect.name)):
        op.execute(f"DROP VIEW {name}")
    op.drop_table("uploaded_datasets")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name in FAILURE_KIND_CHECKS:
            batch_op.drop_constraint(op.f(f"ck_jobs_{name}"), type_="check")
        batch_op.drop_column("failure_kind")
        batch_op.drop_index("ix_jobs_project_created")
        batch_op.drop_constraint(op.f("uq_jobs_project_idempotency_key"), type_="unique")
        batch_op.create_unique_constraint(op.f("uq_jobs_idempotency_key"), ["idempotency_key"])
        batch_op.drop_column("project")
