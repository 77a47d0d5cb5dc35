"""Last-use marks: noted in memory, written in one statement per flush, never lost to a failure."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.db import create_engine, migrate
from magicpixels.services.auth import domain, store
from magicpixels.services.auth.usage import UsageMarks
from tests.support import Database

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MIGRATIONS = "magicpixels.services.auth.migrations"


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database.url, schema=database.schema)
    yield engine
    await engine.dispose()


def make_keys(count: int) -> tuple[domain.Account, list[domain.ApiKey]]:
    peppers = domain.Peppers({1: "pepper"})
    account = domain.new_account("ada@example.com", "Ada", NOW)
    keys = [
        domain.issue_key(account.id, f"k{n}", "live", domain.SCOPES, peppers, NOW)[0]
        for n in range(count)
    ]
    return account, keys


async def store_keys(
    engine: AsyncEngine, account: domain.Account, keys: list[domain.ApiKey]
) -> None:
    await store.create_account(engine, account, keys[0])
    for key in keys[1:]:
        await store.add_api_key(engine, key)


async def add_keys(engine: AsyncEngine, count: int) -> list[str]:
    account, keys = make_keys(count)
    await store_keys(engine, account, keys)
    return [key.id for key in keys]


async def last_used(engine: AsyncEngine) -> dict[str, datetime | None]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(store.api_keys.c.id, store.api_keys.c.last_used_at))
    return {row.id: row.last_used_at and row.last_used_at.replace(tzinfo=UTC) for row in rows}


def count_updates(engine: AsyncEngine) -> list[str]:
    updates: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)

    return updates


async def test_many_uses_of_many_keys_are_written_in_one_statement(
    engine: AsyncEngine, database: Database
) -> None:
    await migrate(engine, MIGRATIONS, schema=database.schema)
    first, second, unused = await add_keys(engine, 3)
    marks = UsageMarks(engine, interval=60)
    for n in range(50):
        marks.note(first, NOW + timedelta(seconds=n))
        marks.note(second, NOW - timedelta(seconds=n))
    updates = count_updates(engine)

    await marks.flush()
    await marks.flush()  # nothing noted since: nothing written

    assert len(updates) == 1
    assert await last_used(engine) == {
        first: NOW + timedelta(seconds=49),
        second: NOW,
        unused: None,
    }


async def test_a_last_use_time_never_moves_backwards(
    engine: AsyncEngine, database: Database
) -> None:
    await migrate(engine, MIGRATIONS, schema=database.schema)
    (key_id,) = await add_keys(engine, 1)
    marks = UsageMarks(engine, interval=60)

    marks.note(key_id, NOW)
    await marks.flush()
    marks.note(key_id, NOW - timedelta(minutes=1))  # noted late by a slower replica
    await marks.flush()

    assert await last_used(engine) == {key_id: NOW}


async def test_marks_that_could_not_be_written_are_kept_for_the_next_flush(
    engine: AsyncEngine, database: Database
) -> None:
    account, keys = make_keys(1)
    marks = UsageMarks(engine, interval=60)
    marks.note(keys[0].id, NOW)

    await marks.flush()  # no tables yet: the write fails
    await migrate(engine, MIGRATIONS, schema=database.schema)
    await store_keys(engine, account, keys)
    await marks.flush()

    assert await last_used(engine) == {keys[0].id: NOW}
