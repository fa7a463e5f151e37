"""Webhook notifications: endpoints, the outbox of deliveries, every delivery attempt; and,
for inbound provider webhooks, an index to find a job by its provider job id and
jobs.poked_at.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DUE = "status = 'pending' AND lease_owner IS NULL"
LEASED = "lease_owner IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("(state = 'disabled') = (disabled_at IS NOT NULL)",
                           name=op.f("ck_webhook_endpoints_disabled_has_time")),
        sa.CheckConstraint("state IN ('enabled', 'disabled')",
                           name=op.f("ck_webhook_endpoints_state_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
        sa.UniqueConstraint("url", name=op.f("uq_webhook_endpoints_url")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("secret_name", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("event_type", sa.String(length=60), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_limit", sa.Integer(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("(status = 'dead') = (dead_at IS NOT NULL)",
                           name=op.f("ck_webhook_deliveries_dead_has_time")),
        sa.CheckConstraint("(status = 'delivered') = (delivered_at IS NOT NULL)",
                           name=op.f("ck_webhook_deliveries_delivered_has_time")),
        sa.CheckConstraint("(status = 'pending') = (next_attempt_at IS NOT NULL)",
                           name=op.f("ck_webhook_deliveries_pending_is_due")),
        sa.CheckConstraint("status = 'pending' OR lease_owner IS NULL",
                           name=op.f("ck_webhook_deliveries_done_is_idle")),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')",
                           name=op.f("ck_webhook_deliveries_status_known")),
        sa.CheckConstraint("(lease_owner IS NULL) = (lease_expires_at IS NULL)",
                           name=op.f("ck_webhook_deliveries_lease_complete")),
        sa.CheckConstraint("attempts >= 0 AND (attempt_limit IS NULL OR attempt_limit >= 1)",
                           name=op.f("ck_webhook_deliveries_counters")),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"],
                                name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"],
                                name=op.f("fk_webhook_deliveries_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("job_id", "seq", "endpoint_id",
                            name=op.f("uq_webhook_deliveries_job_id_seq_endpoint_id")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_deliveries_due", ["next_attempt_at", "id"], unique=False,
                              postgresql_where=sa.text(DUE), sqlite_where=sa.text(DUE))
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_endpoint_id"), ["endpoint_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_job_id"), ["job_id"], unique=False)
        batch_op.create_index("ix_webhook_deliveries_leased", ["lease_expires_at"], unique=False,
                              postgresql_where=sa.text(LEASED), sqlite_where=sa.text(LEASED))
        batch_op.create_index("ix_webhook_deliveries_status_created", ["status", "created_at"],
                              unique=False)

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("response_snippet", sa.String(length=500), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('delivered', 'failed', 'refused')",
                           name=op.f("ck_webhook_attempts_outcome_known")),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"],
                                name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries")),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"],
                                name=op.f("fk_webhook_attempts_endpoint_id_webhook_endpoints")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sa.UniqueConstraint("delivery_id", "attempt",
                            name=op.f("uq_webhook_attempts_delivery_id_attempt")),
    )
    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_attempts_endpoint_started",
                              ["endpoint_id", "started_at"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("poked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_jobs_provider_job", ["provider", "provider_job_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_provider_job")
        batch_op.drop_column("poked_at")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
