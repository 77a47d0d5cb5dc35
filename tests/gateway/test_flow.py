"""The walking skeleton end to end: the whole mesh in this process, driven over real HTTP as a
client would, on SQLite and on PostgreSQL."""

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from magicpixels import cli
from magicpixels.core.settings import GatewaySettings, MeshSettings
from magicpixels.mesh import RunningMesh, start_mesh

from tests.support import Database, mesh_databases

API_EXAMPLE = {"mode": "text_to_image", "prompt": "Editorial product photo on brushed steel"}


@pytest.fixture
async def running_mesh(database: Database, tmp_path: Path) -> AsyncIterator[RunningMesh]:
    data_dir = tmp_path / "mesh"
    settings = MeshSettings(data_dir=data_dir)
    running = await start_mesh(
        settings, GatewaySettings(port=0), service_settings=mesh_databases(database, data_dir)
    )
    yield running
    await running.stop()


@pytest.fixture
async def client(running_mesh: RunningMesh) -> AsyncIterator[httpx.AsyncClient]:
    assert running_mesh.gateway is not None
    base_url = running_mesh.gateway.config.host, running_mesh.gateway.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://{base_url[0]}:{base_url[1]}", timeout=30) as http:
        yield http


async def sign_up(client: httpx.AsyncClient) -> tuple[str, str]:
    response = await client.post("/v1/accounts", json={"email": "ada@example.com", "name": "Ada"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["account"]["credits"] == {"available": 0, "reserved": 0}
    return body["account"]["id"], body["api_key"]["token"]


async def wait_until_done(client: httpx.AsyncClient, job_id: str, token: str) -> dict:
    for _ in range(300):
        response = await client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in ("completed", "failed", "canceled"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def test_signup_grant_generate_download(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    account_id, token = await sign_up(client)
    data_dir = str(running_mesh.mesh.settings.data_dir)
    await asyncio.to_thread(cli.main, ["admin", "grant-credits", account_id, "5", "--data-dir", data_dir])
    auth = {"Authorization": f"Bearer {token}"}

    created = await client.post("/v1/jobs", json=API_EXAMPLE, headers=auth)
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["object"], job["status"], job["cost_credits"]) == ("job", "queued", 1)
    assert job["params"]["width"] == job["params"]["height"] == 1024

    done = await wait_until_done(client, job["id"], token)
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["content_type"] == "image/png"

    signed = await client.get(result["url"])  # no key: the signature is the permission
    assert signed.status_code == 200
    assert signed.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(signed.content))
    assert (image.format, image.size) == ("PNG", (1024, 1024))

    owned = await client.get(f"/v1/assets/{result['asset_id']}/content", headers=auth)
    assert owned.content == signed.content

    account = await client.get("/v1/account", headers=auth)
    assert account.json()["credits"] == {"available": 4, "reserved": 0}


async def test_a_job_the_account_cannot_pay_for_is_refused(client: httpx.AsyncClient) -> None:
    _, token = await sign_up(client)
    response = await client.post("/v1/jobs", json=API_EXAMPLE, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"


async def test_bad_token_is_401_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/jobs", json=API_EXAMPLE, headers={"Authorization": "Bearer mp_live_nope.nope"}
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["request_id"] == response.headers["x-request-id"]


async def test_invalid_json_is_400_in_the_error_shape(client: httpx.AsyncClient) -> None:
    _, token = await sign_up(client)
    response = await client.post(
        "/v1/jobs",
        content=b'{"mode": "text_to_image", "prompt": ',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "X-Request-Id": "client-chosen-id"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": {
        "type": "invalid_request_error", "code": "json_invalid",
        "message": "The body is not valid JSON.", "request_id": "client-chosen-id",
    }}
    assert response.headers["x-request-id"] == "client-chosen-id"
