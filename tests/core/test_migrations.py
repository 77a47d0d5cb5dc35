"""Each service's migrations build exactly the tables its store declares, on both databases."""

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData

from magicpixels.core.db import create_engine, migrate
from tests.support import Database


@pytest.mark.parametrize("service", ["auth", "billing", "assets", "jobs"])
async def test_migrations_match_the_store(database: Database, service: str) -> None:
    metadata: MetaData = importlib.import_module(f"magicpixels.services.{service}.store").metadata

    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection, opts={"version_table": f"alembic_version_{service}"}
        )
        return list(compare_metadata(context, metadata))

    engine = create_engine(database.url, schema=database.schema)
    try:
        await migrate(engine, f"magicpixels.services.{service}.migrations", schema=database.schema)
        async with engine.connect() as connection:
            found = await connection.run_sync(differences)
    finally:
        await engine.dispose()
    assert found == []
