"""Queue order numbers (for queue_position) and the indexes deadlines are found by.

Each job gets its mode's next `queue_seq` when first queued, from the `job_queues` row of its
mode; the jobs queued or running now are numbered in the order they were queued.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MODES = ("text_to_image", "image_to_image", "text_to_audio", "image_to_video")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue_seq", sa.BigInteger))
    op.create_index("ix_jobs_state_mode_queue_seq", "jobs", ["state", "mode", "queue_seq"])
    op.create_index("ix_jobs_state_deadline_at", "jobs", ["state", "deadline_at"])
    queues = op.create_table(
        "job_queues",
        sa.Column("mode", sa.String(32), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_queued_at", sa.DateTime(timezone=True)),
    )
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("mode", sa.String),
        sa.column("state", sa.String),
        sa.column("queued_at", sa.DateTime(timezone=True)),
        sa.column("queue_seq", sa.BigInteger),
    )
    connection = op.get_bind()
    in_line = connection.execute(
        sa.select(jobs.c.id, jobs.c.mode, jobs.c.queued_at)
        .where(jobs.c.state.in_(("queued", "running")))
        .order_by(jobs.c.queued_at, jobs.c.id)
    ).all()
    last: dict[str, tuple[int, object]] = {mode: (0, None) for mode in MODES}
    for job in in_line:
        seq = last.get(job.mode, (0, None))[0] + 1
        last[job.mode] = (seq, job.queued_at)
        connection.execute(sa.update(jobs).where(jobs.c.id == job.id).values(queue_seq=seq))
    op.bulk_insert(
        queues,
        [
            {"mode": mode, "last_seq": seq, "last_queued_at": queued_at}
            for mode, (seq, queued_at) in last.items()
        ],
    )


def downgrade() -> None:
    op.drop_table("job_queues")
    op.drop_index("ix_jobs_state_deadline_at", "jobs")
    op.drop_index("ix_jobs_state_mode_queue_seq", "jobs")
    op.drop_column("jobs", "queue_seq")
