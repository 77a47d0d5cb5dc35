"""Subscriptions with an id, a status and cancellation at period end; holds record their mode.

A subscription made before this revision was active from the start; a hold made before it
records no mode ('').

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

_REQUIRED = {
    "id": sa.String(64),
    "status": sa.String(10),
    "cancel_at_period_end": sa.Boolean(),
    "created_at": sa.DateTime(timezone=True),
}


def upgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("mode", sa.String(32), nullable=False, server_default=""))
    with op.batch_alter_table("holds") as batch:
        batch.alter_column("mode", server_default=None)
    with op.batch_alter_table("subscriptions") as batch:
        for name, kind in _REQUIRED.items():
            batch.add_column(sa.Column(name, kind))
        batch.add_column(sa.Column("canceled_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("ended_at", sa.DateTime(timezone=True)))
        for name in ("current_period_start", "current_period_end"):
            batch.alter_column(name, existing_type=sa.DateTime(timezone=True), nullable=True)
    op.execute(
        "UPDATE subscriptions SET id = 'sub_' || account_id, status = 'active', "
        "cancel_at_period_end = false, created_at = current_period_start"
    )
    with op.batch_alter_table("subscriptions") as batch:
        for name, kind in _REQUIRED.items():
            batch.alter_column(name, existing_type=kind, nullable=False)
    op.create_index("ux_subscriptions_id", "subscriptions", ["id"], unique=True)
    op.create_index(
        "ix_subscriptions_status_current_period_end",
        "subscriptions",
        ["status", "current_period_end"],
    )


def downgrade() -> None:
    op.drop_index("ix_subscriptions_status_current_period_end", "subscriptions")
    op.drop_index("ux_subscriptions_id", "subscriptions")
    op.execute("DELETE FROM subscriptions WHERE current_period_start IS NULL")
    with op.batch_alter_table("subscriptions") as batch:
        for name in ("current_period_start", "current_period_end"):
            batch.alter_column(name, existing_type=sa.DateTime(timezone=True), nullable=False)
        for name in (*_REQUIRED, "canceled_at", "ended_at"):
            batch.drop_column(name)
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("mode")
