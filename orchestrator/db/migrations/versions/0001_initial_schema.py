"""Initial schema: jobs, job_transitions, provider_files.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("spec", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("spec_sha256", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column(
            "labels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("training_blob", sa.String(length=64), nullable=False),
        sa.Column("validation_blob", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("provider_status", sa.String(length=60), nullable=True),
        sa.Column("provider_job_id", sa.String(length=200), nullable=True),
        sa.Column("training_file_id", sa.String(length=200), nullable=True),
        sa.Column("validation_file_id", sa.String(length=200), nullable=True),
        sa.Column("fine_tuned_model", sa.String(length=300), nullable=True),
        sa.Column(
            "result", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(state IN ('cancelled', 'failed', 'succeeded')) = (finished_at IS NOT NULL)",
            name=op.f("ck_jobs_finished_iff_terminal"),
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'validating', 'uploading', 'submitting', 'training', 'finalizing', 'cancelling', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_state_known"),
        ),
        sa.CheckConstraint(
            "state NOT IN ('cancelled', 'failed', 'succeeded') OR (next_run_at IS NULL AND lease_owner IS NULL)",
            name=op.f("ck_jobs_terminal_is_idle"),
        ),
        sa.CheckConstraint(
            "(lease_owner IS NULL) = (lease_expires_at IS NULL)",
            name=op.f("ck_jobs_lease_complete"),
        ),
        sa.CheckConstraint("version >= 1 AND attempts >= 0", name=op.f("ck_jobs_counters")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            "ix_jobs_due",
            ["next_run_at", "id"],
            unique=False,
            postgresql_where=sa.text("lease_owner IS NULL AND next_run_at IS NOT NULL"),
            sqlite_where=sa.text("lease_owner IS NULL AND next_run_at IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_jobs_leased",
            ["lease_expires_at"],
            unique=False,
            postgresql_where=sa.text("lease_owner IS NOT NULL"),
            sqlite_where=sa.text("lease_owner IS NOT NULL"),
        )
        batch_op.create_index("ix_jobs_state_provider", ["state", "provider"], unique=False)

    op.create_table(
        "provider_files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("file_id", sa.String(length=200), nullable=True),
        sa.Column("claimed_by", sa.String(length=40), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "file_id IS NOT NULL OR (claimed_by IS NOT NULL AND claimed_until IS NOT NULL)",
            name=op.f("ck_provider_files_uploaded_or_claimed"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_files")),
        sa.UniqueConstraint(
            "provider", "account", "sha256", name=op.f("uq_provider_files_provider_account_sha256")
        ),
    )
    op.create_table(
        "job_transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("provider_status", sa.String(length=60), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_transitions_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_transitions")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_job_transitions_job_id_seq")),
    )


def downgrade() -> None:
    op.drop_table("job_transitions")
    op.drop_table("provider_files")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_provider")
        batch_op.drop_index(
            "ix_jobs_leased",
            postgresql_where=sa.text("lease_owner IS NOT NULL"),
            sqlite_where=sa.text("lease_owner IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_jobs_due",
            postgresql_where=sa.text("lease_owner IS NULL AND next_run_at IS NOT NULL"),
            sqlite_where=sa.text("lease_owner IS NULL AND next_run_at IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_jobs_created_at"))

    op.drop_table("jobs")
