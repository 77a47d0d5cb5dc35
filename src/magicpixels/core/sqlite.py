"""aiosqlite connections that make one trip to their thread per statement.

aiosqlite runs each connection's calls on a thread of its own, and every call is a trip there
and back: a hand-over between threads that costs tens of microseconds, more on a busy machine.
Through SQLAlchemy a statement took four (open a cursor, execute, fetch, close it) and a BEGIN
three more. Here a statement and the fetch of all its rows make one trip (SQLAlchemy fetches
every row at once anyway), a cursor opens and closes without one, a transaction's BEGIN rides
along with its first statement, and a connection with no transaction open ends none.
"""

import sqlite3
from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import Any

import aiosqlite
import aiosqlite.context


async def connect(database: str) -> "Connection":
    """A connection to the database file, built as `aiosqlite.connect` builds one."""
    connection = Connection(
        partial(sqlite3.connect, database, timeout=30, check_same_thread=False), 64
    )
    connection._thread.daemon = True  # as SQLAlchemy's own connect does: exit never waits on it
    return await connection


class Connection(aiosqlite.Connection):
    """aiosqlite's connection, whose transactions begin in the same trip to its thread as their
    first statement: `begin` is the BEGIN that the transaction under way has still to send.
    Without a transaction open (none sent a statement, or none began: autocommit) there is
    nothing to commit or roll back, and no trip is made for it."""

    begin: str | None = None

    @aiosqlite.context.contextmanager
    async def cursor(self) -> aiosqlite.Cursor:
        # Making a cursor object touches no database (the reason for check_same_thread=False).
        return Cursor(self, self._conn.cursor())

    def take_begin(self) -> str | None:
        begin, self.begin = self.begin, None
        return begin

    async def commit(self) -> None:
        self.begin = None
        if self._conn.in_transaction:
            await super().commit()

    async def rollback(self) -> None:
        self.begin = None
        if self._conn.in_transaction:
            await super().rollback()


class Cursor(aiosqlite.Cursor):
    """Runs a statement and fetches all its rows in one trip; the rows wait here to be fetched.
    By the time SQLAlchemy closes it the statement is done with, so closing needs no trip."""

    _conn: Connection

    def __init__(self, conn: Connection, cursor: sqlite3.Cursor) -> None:
        super().__init__(conn, cursor)
        self._rows: deque[Any] = deque()

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> "Cursor":
        begin = self._conn.take_begin()
        rows = await self._execute(_fetch_all, self._cursor, begin, sql, parameters or ())
        self._rows = deque(rows)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> "Cursor":
        begin = self._conn.take_begin()
        await self._execute(_execute_many, self._cursor, begin, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = min(size or self._cursor.arraysize, len(self._rows))
        return [self._rows.popleft() for _ in range(count)]

    async def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    async def close(self) -> None:
        self._cursor.close()


def _fetch_all(
    cursor: sqlite3.Cursor, begin: str | None, sql: str, parameters: Iterable[Any]
) -> list[Any]:
    if begin:
        cursor.execute(begin)
    return cursor.execute(sql, parameters).fetchall()


def _execute_many(
    cursor: sqlite3.Cursor, begin: str | None, sql: str, parameters: Iterable[Iterable[Any]]
) -> None:
    if begin:
        cursor.execute(begin)
    cursor.executemany(sql, parameters)
