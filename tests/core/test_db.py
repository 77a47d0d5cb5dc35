"""Migrations: services that share one database keep separate histories. Engines: reads never
wait for writers, writes are atomic, SQLite's writers of one process take turns on one
connection."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.db import create_engine, migrate
from tests.support import Database


async def test_services_sharing_a_database_each_get_their_tables(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    try:
        for service in ("auth", "billing", "assets", "jobs"):
            await migrate(engine, f"magicpixels.services.{service}.migrations")
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert {"accounts", "api_keys", "balances", "holds", "assets", "jobs"} <= tables
    assert {f"alembic_version_{s}" for s in ("auth", "billing", "assets", "jobs")} <= tables


async def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'twice.db'}")

    async def schema() -> tuple[list[str], list[tuple[str, ...]]]:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
            revision = await connection.execute(text("SELECT * FROM alembic_version_billing"))
            return sorted(tables), [tuple(row) for row in revision]

    try:
        await migrate(engine, "magicpixels.services.billing.migrations")
        first = await schema()
        await migrate(engine, "magicpixels.services.billing.migrations")
        assert await schema() == first
    finally:
        await engine.dispose()


@pytest.fixture
async def counters(database: Database) -> AsyncIterator[AsyncEngine]:
    async with counting(database) as engine:
        yield engine


@asynccontextmanager
async def counting(database: Database) -> AsyncIterator[AsyncEngine]:
    """An engine of the database with a `counters` table holding one counter at 0."""
    engine = create_engine(database.url, schema=database.schema)
    async with engine.begin() as connection:
        if database.schema:
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{database.schema}"'))
        await connection.run_sync(_COUNTERS.metadata.create_all)
        await connection.execute(insert(_COUNTERS).values(name="jobs", value=0))
    try:
        yield engine
    finally:
        await engine.dispose()


_COUNTERS = Table(
    "counters",
    MetaData(),
    Column("name", String(20), primary_key=True),
    Column("value", Integer, nullable=False),
)


async def _value(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return (await connection.execute(select(_COUNTERS.c.value))).scalar_one()


async def test_a_read_neither_waits_for_a_writer_nor_sees_what_it_did_not_commit(
    counters: AsyncEngine,
) -> None:
    async with counters.begin() as writing:
        await writing.execute(update(_COUNTERS).values(value=1))
        during = await _value(counters)  # SQLite's write lock is held meanwhile

    assert (during, await _value(counters)) == (0, 1)


async def test_a_failed_transaction_leaves_nothing_and_an_empty_one_commits(
    counters: AsyncEngine,
) -> None:
    async def change_then_fail() -> None:
        async with counters.begin() as connection:
            await connection.execute(update(_COUNTERS).values(value=7))
            await connection.execute(insert(_COUNTERS).values(name="jobs", value=1))

    with pytest.raises(IntegrityError):
        await change_then_fail()
    async with counters.begin():
        pass

    assert await _value(counters) == 0


async def test_sqlite_rows_are_fetched_one_at_a_time_as_well(tmp_path: Path) -> None:
    """Its cursors fetch every row with the statement, and hand them out as asked."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'rows.db'}", None)
    async with counting(database) as engine:
        async with engine.begin() as connection:
            rows = [{"name": f"n{number}", "value": number} for number in range(5)]
            await connection.execute(insert(_COUNTERS), rows)
        async with engine.connect() as connection:
            query = select(_COUNTERS.c.value).order_by(_COUNTERS.c.value)
            streamed = await connection.stream(query.execution_options(yield_per=2))
            values = [value async for value in streamed.scalars()]

    assert values == [0, 0, 1, 2, 3, 4]


async def test_sqlite_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    """Each reads the counter and writes it back one more, concurrently: none is refused as
    locked and no increment is lost (PostgreSQL would need a row lock for this)."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}", None)
    async with counting(database) as engine:

        async def increment() -> None:
            async with engine.begin() as connection:
                value = (await connection.execute(select(_COUNTERS.c.value))).scalar_one()
                await asyncio.sleep(0)  # let the others try to write meanwhile
                await connection.execute(update(_COUNTERS).values(value=value + 1))

        await asyncio.gather(*(increment() for _ in range(40)))

        assert await _value(engine) == 40


async def test_each_statement_of_a_read_sees_what_was_committed_before_it(
    counters: AsyncEngine,
) -> None:
    async with counters.connect() as reading:
        before = (await reading.execute(select(_COUNTERS.c.value))).scalar_one()
        async with counters.begin() as writing:
            await writing.execute(update(_COUNTERS).values(value=5))
        after = (await reading.execute(select(_COUNTERS.c.value))).scalar_one()

    assert (before, after) == (0, 5)


async def test_a_writer_cancelled_midway_leaves_nothing_and_the_next_one_writes(
    counters: AsyncEngine,
) -> None:
    """SQLite's writers share one kept connection: a transaction cancelled between two of its
    statements is rolled back, and the next writer starts a transaction of its own."""
    changed = asyncio.Event()

    async def change_then_wait() -> None:
        async with counters.begin() as connection:
            await connection.execute(update(_COUNTERS).values(value=7))
            changed.set()
            await asyncio.Event().wait()

    writer = asyncio.create_task(change_then_wait())
    await changed.wait()
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert await _value(counters) == 0

    async with counters.begin() as connection:
        await connection.execute(update(_COUNTERS).values(value=_COUNTERS.c.value + 1))

    assert await _value(counters) == 1
