"""A whole mesh in this process with its gateway on a free port, and an HTTP client for it."""

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from magicpixels.core.settings import SERVICES, GatewaySettings, MeshSettings
from magicpixels.mesh import RunningMesh, start_mesh
from tests.support import REDIS_URL, Database, mesh_databases

# A Redis database of its own, emptied by each test: runs side by side pick different ones.
MESH_REDIS_DATABASE = int(os.environ.get("MP_TEST_MESH_REDIS_DB", "3"))
API_EXAMPLE = {"mode": "text_to_image", "prompt": "Editorial product photo on brushed steel"}


@pytest.fixture
async def running_mesh(
    database: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[RunningMesh]:
    """The mesh as it is deployed: on SQLite with the in-process bus and rate limiter, or on
    PostgreSQL with Redis (a database of its own, emptied first, so no earlier test's rate limits
    remain). Without the inference service (so jobs stay queued) for tests marked
    `without_workers`."""
    data_dir = tmp_path / "mesh"
    redis_url = None
    if database.schema is not None:
        redis_url = f"{REDIS_URL.rsplit('/', 1)[0]}/{MESH_REDIS_DATABASE}"
        async with redis.Redis.from_url(redis_url) as connection:
            await connection.flushdb()
    settings = MeshSettings(data_dir=data_dir, redis_url=redis_url)
    services = SERVICES
    if request.node.get_closest_marker("without_workers"):
        services = tuple(name for name in SERVICES if name != "inference")
    running = await start_mesh(
        settings,
        GatewaySettings(port=0),
        only=services,
        service_settings=mesh_databases(database, data_dir),
    )
    yield running
    await running.stop()


@pytest.fixture
async def client(running_mesh: RunningMesh) -> AsyncIterator[httpx.AsyncClient]:
    assert running_mesh.gateway is not None
    base_url = running_mesh.gateway.settings.base_url()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        yield http


async def sign_up(client: httpx.AsyncClient) -> tuple[str, str]:
    response = await client.post("/v1/accounts", json={"email": "ada@example.com", "name": "Ada"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["account"]["credits"] == {"available": 0, "reserved": 0}
    return body["account"]["id"], body["api_key"]["token"]
