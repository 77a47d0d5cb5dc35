"""One async SQLAlchemy engine per service and its Alembic migrations.

`engine.begin()` writes: one transaction, committed at the end. `engine.connect()` reads, in
autocommit: each statement on its own sees what was committed before it (as in a READ
COMMITTED transaction), with no BEGIN and ROLLBACK around it, and never waits for a writer.
Writes that are each atomic alone go through `statements_alone`: that connection on
PostgreSQL (each committed alone), the writers' transaction on SQLite. A read that needs one
snapshot across its statements runs in `engine.begin()`; so does one that streams its rows on
PostgreSQL, whose cursors need one.

SQLite (the embedded default) runs in WAL mode and starts every writing transaction with BEGIN
IMMEDIATE: writers queue on the lock (busy_timeout) instead of failing when a read turns into
a write. A read takes no lock: one that took the write lock would hold up every writer
(SQLite's busy handler sleeps a millisecond or more per retry). PostgreSQL keeps each
service's tables in its own schema when one is configured.
"""

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy.ext.asyncio
from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from magicpixels.core import sqlite
from magicpixels.core.errors import SetupError
from magicpixels.core.timestamps import as_utc


def row_fields(row: Row[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """A row's columns by name (of a Row, or a mapping of them), with the naive datetimes
    SQLite answers made aware (UTC)."""
    fields = row._mapping if isinstance(row, Row) else row
    return {
        name: as_utc(value) if isinstance(value, datetime) else value
        for name, value in fields.items()
    }


# The execution option that marks a reading connection, which begins nothing (see `on_begin`).
_READS_ONLY = "magicpixels_reads_only"
# Connections of an engine, all kept once opened: a connection beyond pool_size (overflow) is
# closed when returned, so bursts of short statements would reconnect again and again (and on
# SQLite start a thread and run the PRAGMAs for each).
_POOL_SIZE = 30


class _ReadWriteEngine(AsyncEngine):
    """An engine whose `connect()` gives reading connections and `begin()` writing ones."""

    def __init__(self, engine: AsyncEngine, reads: AsyncEngine) -> None:
        super().__init__(engine.sync_engine)
        self._reads = reads

    def connect(self) -> AsyncConnection:
        return self._reads.connect()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with super().connect() as connection, connection.begin():
            yield connection


class _SQLiteEngine(_ReadWriteEngine):
    """The writers of this process take turns on one connection, kept open.

    The file's lock admits one writer at a time anyway, and SQLite's busy handler makes a
    writer that finds it taken sleep (1, 2, 5, 10 ms...) before trying again, where an asyncio
    lock hands it over at once, in order. Writers in other processes still wait on the file's
    lock (busy_timeout). Each writer taking the one connection, rather than one from the pool,
    saves the checkout and return: about half of the CPU of a short transaction.
    """

    def __init__(self, engine: AsyncEngine, reads: AsyncEngine) -> None:
        super().__init__(engine, reads)
        self._writers = asyncio.Lock()
        self._writer: AsyncConnection | None = None

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self._writers:
            writer = await self._writing_connection()
            async with writer.begin():
                yield writer

    async def _writing_connection(self) -> AsyncConnection:
        writer = self._writer
        if writer is None or writer.closed or writer.invalidated:
            writer = self._writer = await AsyncEngine.connect(self).start()
        else:
            # A transaction whose rollback was cancelled midway is still open: end it first.
            driver: sqlite.Connection = writer.sync_connection.connection.driver_connection
            await driver.rollback()
        return writer

    async def dispose(self, close: bool = True) -> None:
        async with self._writers:
            if self._writer is not None:
                await self._writer.close()
                self._writer = None
        await super().dispose(close)


def statements_alone(engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]:
    """Where writes run that are each atomic alone (one statement, or several that need not
    commit together): on PostgreSQL a connection in autocommit, without the BEGIN and COMMIT
    round trips; on SQLite a transaction in the writers' turn, since a connection outside it
    would wait for the file's lock in the busy handler's sleeps."""
    return engine.connect() if engine.dialect.name == "postgresql" else engine.begin()


def create_engine(url: str, *, schema: str | None = None) -> AsyncEngine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = _sqlite_engine(url)
        return _SQLiteEngine(engine, engine.execution_options(**{_READS_ONLY: True}))
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["server_settings"] = {"search_path": schema}
    # Looked up at each call, so that tracing's instrumentation (core/tracing.py) applies.
    engine = sqlalchemy.ext.asyncio.create_async_engine(
        url, pool_size=_POOL_SIZE, max_overflow=0, connect_args=connect_args
    )
    return _ReadWriteEngine(engine, engine.execution_options(isolation_level="AUTOCOMMIT"))


def _sqlite_engine(url: str) -> AsyncEngine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.ext.asyncio.create_async_engine(
        url,
        pool_size=_POOL_SIZE,
        max_overflow=0,
        async_creator=partial(sqlite.connect, database or ""),
    )

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, begins transactions
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            "busy_timeout=30000",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        if not connection.get_execution_options().get(_READS_ONLY):
            driver: sqlite.Connection = connection.connection.driver_connection
            driver.begin = "BEGIN IMMEDIATE"

    return engine


async def migrate(engine: AsyncEngine, migrations: str, *, schema: str | None = None) -> None:
    """Upgrades the service's schema to the newest revision of `migrations` (a package path)."""
    async with engine.begin() as connection:
        if schema and connection.dialect.name == "postgresql":
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await connection.run_sync(_upgrade, migrations)


def _upgrade(connection: Connection, migrations: str) -> None:
    config = _alembic_config(migrations)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def reach(engine: AsyncEngine, service: str, url: str) -> None:
    """Connects once, so that a database the service cannot reach (down, unknown, refusing its
    login) is a SetupError naming it, without its password; a later fault (a migration's) keeps
    its traceback."""
    try:
        async with engine.connect():
            pass
    except (OSError, SQLAlchemyError) as error:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = getattr(error, "orig", None) or error  # the driver's words, not SQLAlchemy's
        raise SetupError(f"the {service} database at {shown}: {reason}") from error


async def require_migrated(engine: AsyncEngine, migrations: str, *, service: str) -> None:
    """Refuses a database whose schema is not at the newest revision of `migrations`."""
    async with engine.connect() as connection:
        current, newest = await connection.run_sync(_revisions, migrations, service)
    if current != newest:
        raise SetupError(
            f"the {service} database is at revision {sorted(current) or 'none'}, not "
            f"{sorted(newest)}: run `magicpixels migrate {service}` first"
        )


def _revisions(connection: Connection, migrations: str, service: str) -> tuple[set[str], set[str]]:
    context = MigrationContext.configure(connection, opts={"version_table": version_table(service)})
    newest = ScriptDirectory.from_config(_alembic_config(migrations)).get_heads()
    return set(context.get_current_heads()), set(newest)


def _alembic_config(migrations: str) -> Config:
    config = Config()
    config.set_main_option("script_location", f"{migrations}:")
    return config


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def run_migrations(metadata: MetaData, *, service: str) -> None:
    """The body of every service's migrations/env.py: runs on the connection `migrate` passes.

    Each service records its revision in a table of its own, so services that share one
    database (or one schema) never take another's history for theirs.
    """
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        version_table=version_table(service),
    )
    with context.begin_transaction():
        context.run_migrations()
