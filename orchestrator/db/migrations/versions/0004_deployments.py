"""Deployments: tuned models deployed at their provider, with their own history; the
``deploying`` job state; jobs.deployed_model.

Revision ID: 0004
Revises: 0002 (0003 was never released)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

LIVE = "state IN ('creating', 'deleting', 'deploying', 'running')"
STATES_0002 = ("'queued', 'validating', 'uploading', 'submitting', 'training', 'finalizing', "
               "'cancelling', 'succeeded', 'failed', 'cancelled'")
STATES_0004 = ("'queued', 'validating', 'uploading', 'submitting', 'training', 'finalizing', "
               "'deploying', 'cancelling', 'succeeded', 'failed', 'cancelled'")


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("deployed_model", sa.String(length=300), nullable=True),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("ttl_hours", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("provider_status", sa.String(length=60), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(state IN ('deleted', 'failed')) = (finished_at IS NOT NULL)",
            name=op.f("ck_deployments_finished_iff_terminal"),
        ),
        sa.CheckConstraint(
            "deployed_model IS NOT NULL OR state IN ('creating', 'deleting', 'deleted', 'failed')",
            name=op.f("ck_deployments_created_has_id"),
        ),
        sa.CheckConstraint(
            "state IN ('creating', 'deploying', 'running', 'deleting', 'deleted', 'failed')",
            name=op.f("ck_deployments_state_known"),
        ),
        sa.CheckConstraint(
            "state NOT IN ('deleted', 'failed') OR (next_run_at IS NULL AND lease_owner IS NULL)",
            name=op.f("ck_deployments_terminal_is_idle"),
        ),
        sa.CheckConstraint(
            "(lease_owner IS NULL) = (lease_expires_at IS NULL)",
            name=op.f("ck_deployments_lease_complete"),
        ),
        sa.CheckConstraint(
            "version >= 1 AND attempts >= 0 AND capacity >= 1",
            name=op.f("ck_deployments_counters"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_deployments_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployments_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            "ix_deployments_live", ["state", "next_run_at"], unique=False,
            postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE),
        )
        batch_op.create_index(
            "uq_deployments_live_job", ["job_id"], unique=True,
            postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE),
        )

    op.create_table(
        "deployment_transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("provider_status", sa.String(length=60), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"],
            name=op.f("fk_deployment_transitions_deployment_id_deployments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_transitions")),
        sa.UniqueConstraint(
            "deployment_id", "seq", name=op.f("uq_deployment_transitions_deployment_id_seq")
        ),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deployed_model", sa.String(length=300), nullable=True))
        # Autogenerate does not compare CHECK constraints: the new state is added by hand.
        # (SQLite copies the table to change a CHECK; env.py suspends foreign keys for it.)
        batch_op.drop_constraint(op.f("ck_jobs_state_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_state_known"), f"state IN ({STATES_0004})")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_state_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_state_known"), f"state IN ({STATES_0002})")
        batch_op.drop_column("deployed_model")

    op.drop_table("deployment_transitions")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_deployments_live_job", postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE)
        )
        batch_op.drop_index(
            "ix_deployments_live", postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE)
        )
        batch_op.drop_index(batch_op.f("ix_deployments_job_id"))

    op.drop_table("deployments")
