"""The Idempotency-Keys of uploads, with the asset each made.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "asset_idempotency_keys",
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(40), sa.ForeignKey("assets.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_asset_idempotency_keys_created_at", "asset_idempotency_keys", ["created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_asset_idempotency_keys_created_at", "asset_idempotency_keys")
    op.drop_table("asset_idempotency_keys")
