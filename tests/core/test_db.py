"""Migrations: services that share one database keep separate histories."""

from pathlib import Path

from sqlalchemy import inspect, text

from magicpixels.core.db import create_engine, migrate


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
