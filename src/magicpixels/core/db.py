"""One async SQLAlchemy engine per service and its Alembic migrations.

SQLite (the embedded default) runs in WAL mode and starts every transaction with BEGIN
IMMEDIATE: writers queue on the lock (busy_timeout) instead of failing when a read turns into
a write. PostgreSQL keeps each service's tables in its own schema when one is configured.
"""

from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy.ext.asyncio
from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.timestamps import as_utc


def row_fields(row: Row[Any]) -> dict[str, Any]:
    """A row's columns by name, with the naive datetimes SQLite answers made aware (UTC)."""
    return {
        name: as_utc(value) if isinstance(value, datetime) else value
        for name, value in row._mapping.items()
    }


def create_engine(url: str, *, schema: str | None = None) -> AsyncEngine:
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["server_settings"] = {"search_path": schema}
    # Up to 30 connections, all kept once opened: a connection beyond pool_size (overflow) is
    # closed when returned, so bursts of short statements would reconnect again and again.
    # Looked up at each call, so that tracing's instrumentation (core/tracing.py) applies.
    return sqlalchemy.ext.asyncio.create_async_engine(
        url, pool_size=30, max_overflow=0, connect_args=connect_args
    )


def _sqlite_engine(url: str) -> AsyncEngine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.ext.asyncio.create_async_engine(url, connect_args={"timeout": 30})

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
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def migrate(engine: AsyncEngine, migrations: str, *, schema: str | None = None) -> None:
    """Upgrades the service's schema to the newest revision of `migrations` (a package path)."""
    async with engine.begin() as connection:
        if schema and connection.dialect.name == "postgresql":
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await connection.run_sync(_upgrade, migrations)


def _upgrade(connection: Connection, migrations: str) -> None:
    config = Config()
    config.set_main_option("script_location", f"{migrations}:")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


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
        version_table=f"alembic_version_{service}",
    )
    with context.begin_transaction():
        context.run_migrations()
