"""Reading a key by id on a connection held for it: the same key the engine reads, every commit
seen at once (a revoked key is never read as usable), and a read its own connection cannot
serve goes through the engine instead of failing."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.db import create_engine, migrate
from magicpixels.services.auth import store
from magicpixels.services.auth.key_reads import KeyReader
from tests.auth.test_usage import MIGRATIONS, NOW, make_keys, store_keys
from tests.support import Database


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database.url, schema=database.schema)
    await migrate(engine, MIGRATIONS, schema=database.schema)
    yield engine
    await engine.dispose()


@pytest.fixture
async def reader(engine: AsyncEngine) -> AsyncIterator[KeyReader]:
    reader = KeyReader(engine)
    yield reader
    await reader.close()


async def test_a_key_reads_as_the_engine_reads_it(engine: AsyncEngine, reader: KeyReader) -> None:
    account, keys = make_keys(2)
    await store_keys(engine, account, keys)

    for key in keys:  # equal times: aware ones, as the key's (an aware and a naive one differ)
        assert await reader.find(key.id) == key == await store.find_api_key(engine, key.id)
    assert await reader.find("key_missing") is None


async def test_a_revocation_is_read_at_once(engine: AsyncEngine, reader: KeyReader) -> None:
    account, (key,) = make_keys(1)
    await store_keys(engine, account, [key])
    assert await reader.find(key.id) == key

    await store.revoke_api_key(engine, account.id, key.id, NOW)

    assert await reader.find(key.id) == replace(key, revoked_at=NOW)


async def test_many_reads_at_once_all_answer(engine: AsyncEngine, reader: KeyReader) -> None:
    account, keys = make_keys(3)
    await store_keys(engine, account, keys)

    found = await asyncio.gather(*(reader.find(keys[n % 3].id) for n in range(40)))

    assert found == [keys[n % 3] for n in range(40)]


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_broken_held_connection_is_replaced(engine: AsyncEngine, reader: KeyReader) -> None:
    """As after a PostgreSQL restart: the read that meets it still answers."""
    account, (key,) = make_keys(1)
    await store_keys(engine, account, [key])
    await asyncio.gather(*(reader.find(key.id) for _ in range(8)))  # every connection held

    for _connection, driver in reader._idle:
        driver.terminate()

    assert [await reader.find(key.id) for _ in range(8)] == [key] * 8
    assert all(not driver.is_closed() for _connection, driver in reader._idle)


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_read_cancelled_midway_leaves_the_reader_usable(
    engine: AsyncEngine, reader: KeyReader
) -> None:
    account, (key,) = make_keys(1)
    await store_keys(engine, account, [key])
    await reader.find(key.id)

    reading = asyncio.create_task(reader.find(key.id))
    await asyncio.sleep(0)  # it sent its query and waits for the answer
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading

    assert await asyncio.gather(*(reader.find(key.id) for _ in range(8))) == [key] * 8
