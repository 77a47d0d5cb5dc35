"""The jobs routes over real HTTP: list and filters, cancel, long polls, Prefer: wait, SSE,
and keys of one mode not seeing the other mode's jobs."""

import json
from typing import Any

import httpx
import pytest

from magicpixels import cli
from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import API_EXAMPLE, sign_up

SMALL = {**API_EXAMPLE, "width": 64, "height": 64}


async def funded(client: httpx.AsyncClient, running_mesh: RunningMesh) -> dict[str, str]:
    """A new account with 20 credits: its key's Authorization header."""
    account_id, token = await sign_up(client)
    data_dir = str(running_mesh.mesh.settings.data_dir)
    await _grant(account_id, data_dir)
    return {"Authorization": f"Bearer {token}"}


async def _grant(account_id: str, data_dir: str) -> None:
    import asyncio

    await asyncio.to_thread(
        cli.main, ["admin", "grant-credits", account_id, "20", "--data-dir", data_dir]
    )


async def create(client: httpx.AsyncClient, auth: dict[str, str], **headers: str) -> Any:
    response = await client.post("/v1/jobs", json=SMALL, headers={**auth, **headers})
    assert response.status_code in (200, 201), response.text
    return response


async def test_prefer_wait_answers_the_finished_job(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    response = await create(client, auth, Prefer="wait=30")
    job = response.json()
    assert (response.status_code, job["status"]) == (200, "completed")
    assert response.headers["preference-applied"] == "wait=30"
    assert job["result"]["url"].startswith("http://")


async def test_prefer_wait_is_read_as_rfc_7240_writes_it(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """Its name in any case, spaces around its "=", beside another preference."""
    auth = await funded(client, running_mesh)
    for prefer in ("WAIT = 30", "return=minimal, Wait=30"):
        response = await create(client, auth, Prefer=prefer)
        assert response.headers["preference-applied"] == "wait=30", prefer
        assert response.status_code == 200, prefer


async def test_a_long_poll_answers_when_the_status_changes(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    job = (await create(client, auth)).json()
    polled = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}, headers=auth)
    assert polled.json()["status"] != "queued"


async def test_events_stream_status_until_the_end(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    job = (await create(client, auth)).json()
    events = []
    async with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=auth) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    statuses = [body["status"] for name, body in events if name == "status"]
    assert statuses[-1] == "completed"
    assert statuses == sorted(statuses, key=["queued", "running", "completed"].index)
    assert events[-1][1]["result"]["content_type"] == "image/png"


@pytest.mark.without_workers
async def test_list_pages_newest_first_and_filters(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    ids = [(await create(client, auth)).json()["id"] for _ in range(3)]
    first = (await client.get("/v1/jobs", params={"limit": 2}, headers=auth)).json()
    assert (first["object"], first["has_more"]) == ("list", True)
    assert [job["id"] for job in first["data"]] == ids[::-1][:2]
    rest = await client.get(
        "/v1/jobs", params={"limit": 2, "starting_after": first["next_cursor"]}, headers=auth
    )
    assert ([job["id"] for job in rest.json()["data"]], rest.json()["has_more"]) == (
        [ids[0]],
        False,
    )
    await client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth)
    canceled = await client.get("/v1/jobs", params={"status": "canceled"}, headers=auth)
    assert [job["id"] for job in canceled.json()["data"]] == [ids[1]]
    bad = await client.get("/v1/jobs", params={"status": "done"}, headers=auth)
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "status")
    too_many = await client.get("/v1/jobs", params={"limit": 101}, headers=auth)
    assert (too_many.status_code, too_many.json()["error"]["param"]) == (400, "limit")


@pytest.mark.without_workers
async def test_cancel_releases_the_hold_and_only_once(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    job = (await create(client, auth)).json()
    assert job["queue_position"] == 0
    canceled = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert (canceled.status_code, canceled.json()["status"]) == (200, "canceled")
    again = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "job_not_cancelable")
    polled = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 5}, headers=auth)
    assert polled.json()["status"] == "canceled"


@pytest.mark.without_workers
async def test_a_test_key_does_not_see_live_jobs(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    job = (await create(client, auth)).json()
    account = (await client.get("/v1/account", headers=auth)).json()
    keys = auth_pb2_grpc.AuthServiceStub(running_mesh.mesh.channel("auth"))
    test_key = await keys.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(
            account_id=account["id"], name="ci", mode=auth_pb2.KEY_MODE_TEST
        )
    )
    test_auth = {"Authorization": f"Bearer {test_key.token}"}
    for method, path in (
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
    ):
        response = await client.request(method, path, headers=test_auth)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")
    listed = await client.get("/v1/jobs", headers=test_auth)
    assert listed.json()["data"] == []
