"""Balances, the ledger, holds and subscriptions.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "balances",
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("available >= 0", name="ck_balances_available_not_negative"),
        sa.CheckConstraint("reserved >= 0", name="ck_balances_reserved_not_negative"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(255)),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ledger_entries_account_id_id", "ledger_entries", ["account_id", "id"])
    op.create_index(
        "ux_ledger_entries_account_id_kind_reference",
        "ledger_entries",
        ["account_id", "kind", "reference"],
        unique=True,
    )
    op.create_table(
        "holds",
        sa.Column("reference", sa.String(255), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured_amount", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_holds_state_expires_at", "holds", ["state", "expires_at"])
    op.create_table(
        "subscriptions",
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("plan_id", sa.String(40), nullable=False),
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("subscriptions")
    op.drop_table("holds")
    op.drop_table("ledger_entries")
    op.drop_table("balances")
