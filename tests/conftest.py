"""Fixtures every test shares: a fresh data folder, a fresh database per test, real servers.

Each test that takes `database` runs twice: on a new SQLite file and on a new PostgreSQL schema
(MP_TEST_POSTGRES_URL), so nothing is shared between tests.
"""

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from magicpixels.core.bus import LocalBus
from magicpixels.core.logging import configure_logging
from magicpixels.core.service import Mesh
from magicpixels.core.settings import MeshSettings
from tests.support import POSTGRES_URL, Database, channel_to, serving

__all__ = ["channel_to", "serving"]

configure_logging("warning", "console")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        yield Database(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", None)
        return
    schema = f"test_{secrets.token_hex(6)}"
    dsn = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    yield Database(POSTGRES_URL, schema)
    connection = await asyncpg.connect(dsn)
    try:  # the schema, and those named after it (one per service of a whole mesh)
        names = await connection.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $1 || '\\_%'",
            schema,
        )
        for row in names:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
def mesh_settings(tmp_path: Path) -> MeshSettings:
    return MeshSettings(
        data_dir=tmp_path / "data", service_token="test-service-token", grace_seconds=0.5
    )


@pytest.fixture
async def mesh(mesh_settings: MeshSettings) -> AsyncIterator[Mesh]:
    runtime = Mesh(mesh_settings, LocalBus())
    yield runtime
    await runtime.close()
    await runtime.bus.close()
