"""Reading an API key by id in one trip to the database: what each cache miss of a gateway costs.

Through the async engine that read cost ~250 us of CPU, many times the lookup itself: a pool
checkout and return, greenlet switches, and on SQLite aiosqlite's hand-over to its thread and
back. Here the engine's own SQL for it is compiled once and run on a connection held for it:

- SQLite: a read-only connection of its own to the same file, called on the event loop's
  thread: a lookup by primary key takes microseconds, and in WAL mode a reader never waits for
  a writer. Its busy timeout is 0, so the rare lock a reader can meet (a WAL being recovered)
  sends that read through the engine instead of stalling the loop.
- PostgreSQL: asyncpg connections of the engine's pool (its schema and settings), held, each
  used by one read at a time; a read that finds all of them busy goes through the engine.

Nothing is cached: as with `engine.connect()`, each read sees what was committed before it, so
a revoked key is refused at once. While tracing is on, reads go through the engine, whose
instrumentation records them.
"""

import sqlite3
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from magicpixels.core import tracing
from magicpixels.services.auth import store
from magicpixels.services.auth.domain import ApiKey

# PostgreSQL connections held for reads: enough for the cache misses of a burst, few enough
# that the engine's pool (core/db.py) keeps most of its connections.
_HELD_CONNECTIONS = 4
# What a held PostgreSQL connection raises once it is broken (the server restarted, the network
# dropped): it is let go, and the read goes through the engine.
_BROKEN = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)


class KeyReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect
        self._sql = str(store.API_KEY_BY_ID.compile(dialect=dialect))
        self._columns: list[tuple[str, Callable[[Any], Any] | None]] = [
            (column.name, column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in store.API_KEY_BY_ID.selected_columns
        ]
        self._sqlite = _sqlite_reader(engine)
        self._postgres = dialect.name == "postgresql"
        self._idle: list[tuple[AsyncConnection, asyncpg.Connection]] = []
        self._held = 0

    async def find(self, key_id: str) -> ApiKey | None:
        """The key with this id, as committed now; None when there is none."""
        if tracing.enabled():
            return await store.find_api_key(self._engine, key_id)
        if self._sqlite is not None:
            try:
                return self._key(self._sqlite.execute(self._sql, (key_id,)).fetchall())
            except sqlite3.OperationalError:  # locked: the engine's read waits it out
                return await store.find_api_key(self._engine, key_id)
        if self._postgres and (self._idle or self._held < _HELD_CONNECTIONS):
            return await self._find_on_held(key_id)
        return await store.find_api_key(self._engine, key_id)

    async def close(self) -> None:
        """Gives the held connections back to the engine's pool."""
        if self._sqlite is not None:
            self._sqlite.close()
        idle, self._idle = self._idle, []
        for connection, _driver in idle:
            self._held -= 1
            await connection.close()

    async def _find_on_held(self, key_id: str) -> ApiKey | None:
        connection, driver = self._idle.pop() if self._idle else await self._hold()
        try:
            record = await driver.fetchrow(self._sql, key_id)
        except _BROKEN:
            await self._let_go(connection, driver)
            return await store.find_api_key(self._engine, key_id)
        except BaseException:  # cancelled mid-read, say: what the connection holds is unknown
            await self._let_go(connection, driver)
            raise
        self._idle.append((connection, driver))
        return self._key([] if record is None else [tuple(record.values())])

    async def _hold(self) -> tuple[AsyncConnection, asyncpg.Connection]:
        """One more connection of the engine's pool, kept until `close`."""
        self._held += 1
        try:
            connection = await self._engine.connect().start()
        except BaseException:
            self._held -= 1
            raise
        pooled = await connection.get_raw_connection()  # the one just checked out: no trip
        return connection, pooled.driver_connection

    async def _let_go(self, connection: AsyncConnection, driver: asyncpg.Connection) -> None:
        """Drops a connection that may be broken or mid-read: closed at once, not reused."""
        self._held -= 1
        driver.terminate()
        await connection.invalidate()
        await connection.close()

    def _key(self, rows: list[tuple[Any, ...]]) -> ApiKey | None:
        if not rows:
            return None
        fields = {
            name: value if convert is None else convert(value)
            for (name, convert), value in zip(self._columns, rows[0], strict=True)
        }
        return store.api_key_of(fields)


def _sqlite_reader(engine: AsyncEngine) -> sqlite3.Connection | None:
    """A read-only connection to the engine's SQLite file (core/db.py makes no in-memory
    engine); None for any other database."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database is None:
        return None
    # Autocommit, so that each read is a transaction of its own (it sees the latest commit).
    connection = sqlite3.connect(database, timeout=0, isolation_level=None)
    connection.execute("PRAGMA query_only=ON")
    return connection
