from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from magicpixels.core.db import create_engine, migrate
from magicpixels.services.auth import store
from tests.conftest import Database


def differences(connection: Connection) -> list[object]:
    return compare_metadata(MigrationContext.configure(connection), store.metadata)


async def test_the_migrations_create_exactly_the_tables_of_the_store(database: Database) -> None:
    engine = create_engine(database.url, schema=database.schema)
    try:
        await migrate(engine, "magicpixels.services.auth.migrations", schema=database.schema)
        async with engine.connect() as connection:
            found = await connection.run_sync(differences)
    finally:
        await engine.dispose()

    assert found == []
