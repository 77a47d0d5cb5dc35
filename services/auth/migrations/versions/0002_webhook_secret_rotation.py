"""The webhook secret a rotation replaced, valid for a grace period.

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
    op.add_column("accounts", sa.Column("previous_webhook_secret", sa.String(100)))
    op.add_column(
        "accounts",
        sa.Column("previous_webhook_secret_expires_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_column("accounts", "previous_webhook_secret_expires_at")
    op.drop_column("accounts", "previous_webhook_secret")
