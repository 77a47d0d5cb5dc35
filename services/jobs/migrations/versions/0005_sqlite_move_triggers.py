"""On SQLite, triggers write a move's status event and hand a queued job's number on, so that a
move is one statement there as it is on PostgreSQL (a data-modifying CTE, which SQLite lacks).

`jobs_status_event`: each row an UPDATE of `state` moves gets its `status` event, timed by its
`updated_at` (every move sets it to the move's time). `jobs_queue_seq_taken`: the queueing
UPDATE reads its mode's next number from `job_queues` itself; the trigger records it as taken.
SQLite runs one writer at a time, so no other queueing reads the number in between. PostgreSQL
keeps its statements as they were: there, the number is taken by updating (and so locking) the
mode's row first.

A later migration that rebuilds `jobs` on SQLite (Alembic's batch mode copies the table and
drops the old one) drops these triggers with it: it has to create them again (`TRIGGERS`).
tests/jobs/test_store.py fails on SQLite when a move writes no event.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 00:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGERS = {
    "jobs_status_event": """
        CREATE TRIGGER jobs_status_event AFTER UPDATE OF state ON jobs
        BEGIN
            INSERT INTO job_events (job_id, type, state, progress, created_at)
            VALUES (NEW.id, 'status', NEW.state, NEW.progress, NEW.updated_at);
        END
    """,
    "jobs_queue_seq_taken": """
        CREATE TRIGGER jobs_queue_seq_taken AFTER UPDATE OF queue_seq ON jobs
        BEGIN
            UPDATE job_queues SET last_seq = NEW.queue_seq, last_queued_at = NEW.queued_at
            WHERE mode = NEW.mode;
        END
    """,
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for create in TRIGGERS.values():
            op.execute(create)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
