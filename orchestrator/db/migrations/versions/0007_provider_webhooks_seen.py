"""Provider webhooks seen lately: the ids of verified inbound webhooks, kept within their
timestamp's tolerance so that a replayed one changes nothing (several API processes share
them).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_webhooks_seen",
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("webhook_id", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "webhook_id", name=op.f("pk_provider_webhooks_seen")),
    )
    op.create_index("ix_provider_webhooks_seen_received_at", "provider_webhooks_seen",
                    ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_provider_webhooks_seen_received_at", table_name="provider_webhooks_seen")
    op.drop_table("provider_webhooks_seen")
