"""Job control over real HTTP: quotes (priced as the table says, validated as creates are,
spending nothing), deadlines, and queue positions in reads, long polls and event streams."""

import asyncio
import json
import math
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.mesh import RunningMesh
from tests.assets.samples import encode_audio, encode_image
from tests.gateway.conftest import API_EXAMPLE, sign_up
from tests.gateway.test_jobs import SMALL, funded
from tests.support import eventually

pytestmark = pytest.mark.without_workers


async def upload(
    client: httpx.AsyncClient, auth: dict[str, str], data: bytes, content_type: str
) -> str:
    response = await client.post(
        "/v1/assets", content=data, headers={**auth, "Content-Type": content_type}
    )
    assert response.status_code == 201, response.text
    asset_id: str = response.json()["id"]
    return asset_id


async def spent(client: httpx.AsyncClient, auth: dict[str, str]) -> tuple[Any, ...]:
    """Everything a quote must leave as it was: credits, ledger entries, jobs."""
    account = (await client.get("/v1/account", headers=auth)).json()
    ledger = (await client.get("/v1/credits/ledger", headers=auth)).json()
    jobs = (await client.get("/v1/jobs", headers=auth)).json()
    return account["credits"], ledger["data"], jobs["data"]


def error_of(response: httpx.Response) -> tuple[int, dict[str, Any]]:
    error = dict(response.json()["error"])
    error.pop("request_id")
    return response.status_code, error


async def test_a_quote_prices_every_mode_as_the_price_table_and_spends_nothing(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    image = await upload(client, auth, encode_image("PNG", (64, 48)), "image/png")
    audio = await upload(client, auth, encode_audio("audio/flac", seconds=2.5), "audio/flac")
    prices = {price["mode"]: price for price in (await client.get("/v1/pricing")).json()["data"]}
    bodies: list[tuple[dict[str, Any], str, float]] = [
        (API_EXAMPLE, "text_to_image", 0),
        ({"mode": "image_to_image", "prompt": "in ink", "input_asset_id": image}, "", 0),
        ({"mode": "text_to_audio", "prompt": "rain", "duration_seconds": 25}, "", 25),
        ({"mode": "audio", "prompt": "rain"}, "text_to_audio", 10),
        ({"mode": "image_to_video", "input_asset_id": image, "duration_seconds": 1.5}, "", 1.5),
        ({"mode": "image_to_video", "input_asset_id": image, "audio_asset_id": audio}, "", 2.5),
    ]
    before = await spent(client, auth)

    for body, mode, duration in bodies:
        response = await client.post("/v1/jobs/quote", json=body, headers=auth)
        assert response.status_code == 200, response.text
        price = prices[mode or body["mode"]]
        blocks = 1 if price["unit"] == "job" else math.ceil(duration / price["unit_block"])
        cost = price["credits"] * blocks
        assert response.json() == {
            "object": "quote",
            "mode": mode or body["mode"],
            "cost_credits": cost,
            "available_credits": 20,
            "sufficient": cost <= 20,
        }

    assert await spent(client, auth) == before
    assert prices.keys() == {"text_to_image", "image_to_image", "text_to_audio", "image_to_video"}


async def test_a_bad_body_gets_the_answer_a_create_gets(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    audio = await upload(client, auth, encode_audio("audio/flac", seconds=2.5), "audio/flac")
    other = await funded_other(client)
    theirs = await upload(client, other, encode_image("PNG", (64, 48)), "image/png")
    bodies: list[dict[str, Any]] = [
        {"mode": "sculpture", "prompt": "a"},
        {"mode": "text_to_image"},
        {**SMALL, "width": 1001},
        {**SMALL, "deadline_seconds": 0},
        {**SMALL, "deadline_seconds": 86401},
        {**SMALL, "colour": "red"},
        {**SMALL, "steps": "many"},
        {**SMALL, "webhook_url": "http://10.0.0.1/hook"},
        {"mode": "image_to_image", "prompt": "a"},
        {"mode": "image_to_image", "prompt": "a", "input_asset_id": "asset_missing"},
        {"mode": "image_to_image", "prompt": "a", "input_asset_id": theirs},
        {"mode": "image_to_image", "prompt": "a", "input_asset_id": audio},
        {"mode": "text_to_audio", "prompt": "a", "duration_seconds": 301},
    ]
    before = await spent(client, auth)

    for body in bodies:
        created = await client.post("/v1/jobs", json=body, headers=auth)
        quoted = await client.post("/v1/jobs/quote", json=body, headers=auth)
        assert created.status_code in (400, 404), created.text
        assert error_of(quoted) == error_of(created)
    not_json = [
        await client.post(path, content=b"{", headers={**auth, "Content-Type": "application/json"})
        for path in ("/v1/jobs", "/v1/jobs/quote")
    ]

    assert error_of(not_json[0]) == error_of(not_json[1])
    assert not_json[0].status_code == 400
    assert await spent(client, auth) == before


async def funded_other(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/v1/accounts", json={"email": "grace@example.com"})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']['token']}"}


async def test_a_quote_keeps_to_the_keys_scopes_and_mode(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    keys = {}
    for name, body in (
        ("read", {"name": "reader", "mode": "live", "scopes": ["jobs:read"]}),
        ("test", {"name": "ci", "mode": "test"}),
    ):
        created = await client.post("/v1/api_keys", json=body, headers=auth)
        assert created.status_code == 201, created.text
        keys[name] = {"Authorization": f"Bearer {created.json()['token']}"}
    live_image = await upload(client, auth, encode_image("PNG", (64, 48)), "image/png")

    refused = [
        await client.post(path, json=SMALL, headers=keys["read"])
        for path in ("/v1/jobs", "/v1/jobs/quote")
    ]
    test_quote = await client.post("/v1/jobs/quote", json=SMALL, headers=keys["test"])
    other_mode_asset = {"mode": "image_to_image", "prompt": "a", "input_asset_id": live_image}
    hidden = await client.post("/v1/jobs/quote", json=other_mode_asset, headers=keys["test"])

    assert error_of(refused[0]) == error_of(refused[1])
    assert (refused[1].status_code, refused[1].json()["error"]["code"]) == (403, "scope_missing")
    assert test_quote.json()["cost_credits"] == 0
    assert test_quote.json()["sufficient"] is True
    assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "asset_not_found")


async def test_a_job_past_its_deadline_is_canceled_and_refunded(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)

    created = await client.post("/v1/jobs", json={**SMALL, "deadline_seconds": 1}, headers=auth)
    job = created.json()
    polled = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}, headers=auth)

    async def credits_back() -> bool:
        credits = (await client.get("/v1/account", headers=auth)).json()["credits"]
        return bool(credits == {"available": 20, "reserved": 0})

    await eventually(credits_back)
    ledger = (await client.get("/v1/credits/ledger", headers=auth)).json()["data"]

    assert created.status_code == 201, created.text
    lasts = _time(job["deadline_at"]) - _time(job["created_at"])
    assert lasts == timedelta(seconds=1)
    canceled = polled.json()
    assert (canceled["status"], canceled["queue_position"]) == ("canceled", None)
    assert canceled["error"]["code"] == "deadline_exceeded"
    assert [entry["type"] for entry in ledger if entry["job_id"] == job["id"]] == [
        "release",
        "hold",
    ]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_queue_positions_count_down_as_workers_lease(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    created = await asyncio.gather(
        *(client.post("/v1/jobs", json=SMALL, headers=auth) for _ in range(8))
    )
    ids = [response.json()["id"] for response in created]
    jobs = jobs_pb2_grpc.JobsServiceStub(running_mesh.mesh.channel("jobs"))
    lease = jobs_pb2.LeaseJobRequest(worker_id="w", modes=[jobs_pb2.JOB_MODE_TEXT_TO_IMAGE])

    async def positions() -> dict[str, int | None]:
        found = [(await client.get(f"/v1/jobs/{job_id}", headers=auth)).json() for job_id in ids]
        return {job["id"]: job["queue_position"] for job in found}

    first = await positions()
    assert sorted(first.values()) == list(range(8))  # type: ignore[type-var]
    assert sorted(response.json()["queue_position"] for response in created) == list(range(8))
    in_line = sorted(ids, key=lambda job_id: first[job_id] or 0)
    for leased_count in range(1, 9):
        leased = (await jobs.LeaseJob(lease)).lease.job.id
        now = await positions()
        assert leased == in_line[leased_count - 1]
        assert now == {
            job_id: (None if place < leased_count else place - leased_count)
            for place, job_id in enumerate(in_line)
        }


async def test_the_event_stream_tells_each_new_queue_position(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    ahead = [(await client.post("/v1/jobs", json=SMALL, headers=auth)).json() for _ in range(2)]
    job = (await client.post("/v1/jobs", json=SMALL, headers=auth)).json()
    events: list[tuple[str, dict[str, Any]]] = []

    async with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=auth) as stream:
        lines = stream.aiter_lines()
        events.append(await _next_event(lines))
        for earlier in ahead:
            await client.post(f"/v1/jobs/{earlier['id']}/cancel", headers=auth)
            events.append(await _next_event(lines))
        await client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        events.append(await _next_event(lines))

    assert [(name, body["status"], body["queue_position"]) for name, body in events] == [
        ("status", "queued", 2),
        ("queue_position", "queued", 1),
        ("queue_position", "queued", 0),
        ("status", "canceled", None),
    ]


async def _next_event(lines: Any) -> tuple[str, dict[str, Any]]:
    name = ""
    async for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            return name, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended")


async def test_an_account_without_credits_is_quoted_insufficient(
    client: httpx.AsyncClient,
) -> None:
    _, token = await sign_up(client)
    auth = {"Authorization": f"Bearer {token}"}

    quoted = await client.post("/v1/jobs/quote", json=SMALL, headers=auth)
    created = await client.post("/v1/jobs", json=SMALL, headers=auth)

    assert quoted.json() == {
        "object": "quote",
        "mode": "text_to_image",
        "cost_credits": 1,
        "available_credits": 0,
        "sufficient": False,
    }
    assert (created.status_code, created.json()["error"]["code"]) == (402, "insufficient_credits")


@pytest.mark.without_workers
async def test_a_stopping_gateway_answers_its_long_polls_and_ends_its_event_streams(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """A rollout stops gateways: a long poll then answers the job as it is, and an event
    stream ends cleanly (an EventSource reconnects elsewhere), where both were cut at the end
    of the grace period with a plain-text 500 and a torn stream."""
    auth = await funded(client, running_mesh)
    created = await client.post("/v1/jobs", json=SMALL, headers=auth)
    job_id = created.json()["id"]
    gateway = running_mesh.gateway
    assert gateway is not None

    async def stream() -> list[str]:
        path = f"/v1/jobs/{job_id}/events"
        async with client.stream("GET", path, headers=auth, timeout=90) as response:
            return [line async for line in response.aiter_lines() if line.startswith("event:")]

    poll = asyncio.create_task(client.get(f"/v1/jobs/{job_id}?wait=60", headers=auth, timeout=90))
    events = asyncio.create_task(stream())

    async def both_waiting() -> bool:
        return len(gateway.server_state.tasks) == 2

    await eventually(both_waiting)
    await gateway.stop(running_mesh.gateway_task)

    polled = await poll
    assert (polled.status_code, polled.json()["status"]) == (200, "queued")
    assert await events == ["event: status"]
