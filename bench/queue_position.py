"""The cost of a job's queue_position, as a GET computes it, with 10,000 jobs queued.

    .venv/bin/python bench/queue_position.py [--queued 10000] [--reads 500] [--postgres]

Fills the jobs database as a busy service leaves it: 10,000 jobs already run, then the queued
ones of the same mode, of which one in a hundred was canceled out of order, and another mode's
queue beside them. For jobs picked at random along the queue it times, on one open connection,
the position's statement, the COUNT of the queued jobs ahead that it replaces, and `SELECT 1`
(the floor of any statement); then `store.queue_position` as a GET calls it (a pooled
connection checked out, the statement, the arithmetic). Medians, in microseconds.
"""

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text, tuple_, update

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DONE = 10_000


async def main(queued: int, reads: int, postgres: bool) -> None:
    from magicpixels.core.logging import configure_logging
    from magicpixels.core.service import open_database
    from magicpixels.core.settings import JobsSettings, MeshSettings
    from magicpixels.core.timestamps import utcnow
    from magicpixels.services.jobs import store

    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as folder:
        schema = f"bench_qp_{os.getpid()}" if postgres else None
        url = POSTGRES_URL if postgres else f"sqlite+aiosqlite:///{Path(folder) / 'jobs.db'}"
        settings = JobsSettings(database_url=url, database_schema=schema)
        mesh = MeshSettings(data_dir=Path(folder))
        engine = await open_database(mesh, settings, "jobs", "magicpixels.services.jobs.migrations")
        try:
            await _fill(engine, store, queued, utcnow())
            async with engine.connect() as connection:
                outside = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await outside.execute(text("VACUUM ANALYZE jobs" if postgres else "ANALYZE"))
            rows = await _sample(engine, store, reads)
            async with engine.connect() as connection:
                timings = {
                    name: [await _timed(connection.execute(*build(row))) for row in rows]
                    for name, build in (
                        ("position", lambda row: (store.QUEUE_POSITION, _params(store, row))),
                        ("count", lambda row: (_count_ahead(store, row),)),
                        ("floor", lambda _: (text("SELECT 1"),)),
                    )
                }
            timings["get"] = [await _timed(store.queue_position(engine, row)) for row in rows]
        finally:
            await engine.dispose()
            if postgres:
                await _drop(schema)
    where = "PostgreSQL" if postgres else "SQLite"
    us = {name: statistics.median(samples) for name, samples in timings.items()}
    print(
        f"queue_position on {where}, {queued} queued ({DONE} run before), medians of {reads}:\n"
        f"  statement {us['position']:.0f} us (SELECT 1: {us['floor']:.0f} us, so "
        f"{us['position'] - us['floor']:.0f} us of work); the COUNT of the jobs ahead it "
        f"replaces: {us['count']:.0f} us ({us['count'] - us['floor']:.0f} us of work)\n"
        f"  store.queue_position as a GET calls it, connection checkout included: "
        f"{us['get']:.0f} us"
    )


async def _fill(engine: Any, store: Any, queued: int, now: datetime) -> None:
    """Run jobs numbered 1..DONE, then the queue; every hundredth queued job canceled."""
    rows = []
    for seq in range(1, DONE + queued + 1):
        state = "completed" if seq <= DONE else "queued"
        if seq > DONE and seq % 100 == 0:
            state = "canceled"
        rows.append(_row(f"job_bench{seq:08d}", "text_to_image", state, seq, now, seq))
    rows += [
        _row(f"job_audio{seq:08d}", "text_to_audio", "queued", seq, now, seq)
        for seq in range(1, queued // 10 + 1)
    ]
    async with engine.begin() as connection:
        for start in range(0, len(rows), 2000):
            await connection.execute(insert(store.jobs), rows[start : start + 2000])
        for mode, last in (("text_to_image", DONE + queued), ("text_to_audio", queued // 10)):
            queue = store.job_queues
            await connection.execute(
                update(queue).where(queue.c.mode == mode).values(last_seq=last)
            )


def _row(job_id: str, mode: str, state: str, seq: int, now: datetime, order: int) -> dict[str, Any]:
    at = now + timedelta(microseconds=order)
    return {
        "id": job_id, "account_id": "acct_bench", "livemode": True, "mode": mode,
        "spec": '{"mode":"JOB_MODE_TEXT_TO_IMAGE","prompt":"p"}', "state": state,
        "progress": 0.0, "cost_credits": 1, "attempts": 0, "lease_token": 0, "billing": "held",
        "created_at": at, "queued_at": at, "updated_at": at, "queue_seq": seq,
    }  # fmt: skip


async def _sample(engine: Any, store: Any, reads: int) -> list[Any]:
    query = select(store.jobs).where(
        store.jobs.c.state == "queued", store.jobs.c.mode == "text_to_image"
    )
    async with engine.connect() as connection:
        found = list((await connection.execute(query)).all())
    return random.Random(7).sample(found, min(reads, len(found)))


def _params(store: Any, row: Any) -> Any:
    return store.queue_position_params(row)


def _count_ahead(store: Any, job: Any) -> Any:
    """The statement queue_position was before: a COUNT of the queued jobs ahead."""
    jobs = store.jobs
    return (
        select(func.count())
        .select_from(jobs)
        .where(
            jobs.c.state == "queued",
            jobs.c.mode == job.mode,
            tuple_(jobs.c.queued_at, jobs.c.id) < tuple_(job.queued_at, job.id),
        )
    )


async def _timed(call: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await call
    return (time.perf_counter() - started) * 1e6


async def _drop(schema: str | None) -> None:
    import asyncpg

    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--postgres", action="store_true")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.queued, arguments.reads, arguments.postgres))
