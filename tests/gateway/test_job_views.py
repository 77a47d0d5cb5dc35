"""`GET /v1/jobs/{id}` from the gateway's memory: answered without a call to the jobs service
while nothing changed, and never stale after a change this gateway made, after a change another
process announced (through Redis across gateways), or after a move of the queue."""

from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from magicpixels.gateway.job_views import JobViews
from magicpixels.gateway.principal import Principal
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import API_EXAMPLE
from tests.gateway.test_auth import bearer, gateway_client, gateway_state
from tests.gateway.test_jobs import funded
from tests.support import REDIS_URL, Database, eventually

pytestmark = pytest.mark.without_workers

_GET_JOB = "/magicpixels.jobs.v1.JobsService/GetJob"


def _get_job_calls() -> float:
    """GetJob calls the gateway made so far, answered or not."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "magicpixels_grpc_client_handled":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["grpc_method"] == _GET_JOB:
                total += sample.value
    return total


async def _funded_job(
    client: httpx.AsyncClient, running: RunningMesh
) -> tuple[dict[str, str], str]:
    """A new account's key (its Authorization header) and a job it created."""
    auth = await funded(client, running)
    created = await client.post("/v1/jobs", json=API_EXAMPLE, headers=auth)
    assert created.status_code == 201, created.text
    return auth, created.json()["id"]


async def test_a_polled_job_is_answered_from_memory_until_it_changes(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth, job_id = await _funded_job(client, running_mesh)
    await eventually(lambda: _views_following(running_mesh))
    first = await client.get(f"/v1/jobs/{job_id}", headers=auth)

    async def answered_from_memory() -> bool:
        calls = _get_job_calls()
        await client.get(f"/v1/jobs/{job_id}", headers=auth)
        return _get_job_calls() == calls

    # The announcement of the job's creation may come after the first read and drop it.
    await eventually(answered_from_memory)
    calls = _get_job_calls()
    polled = [await client.get(f"/v1/jobs/{job_id}", headers=auth) for _ in range(5)]
    assert _get_job_calls() == calls  # none of the five asked the jobs service
    assert all(poll.json() == first.json() for poll in polled)
    assert polled[0].headers["content-type"] == first.headers["content-type"]

    canceled = await client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    after = await client.get(f"/v1/jobs/{job_id}", headers=auth)

    assert canceled.json()["status"] == "canceled"
    assert after.json() == canceled.json()


async def test_a_queue_move_refreshes_the_position_of_the_jobs_behind(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    ahead, behind = [
        (await client.post("/v1/jobs", json=API_EXAMPLE, headers=auth)).json()["id"]
        for _ in range(2)
    ]
    await eventually(lambda: _views_following(running_mesh))
    before = await client.get(f"/v1/jobs/{behind}", headers=auth)

    await client.post(f"/v1/jobs/{ahead}/cancel", headers=auth)

    async def moved_up() -> bool:
        found = await client.get(f"/v1/jobs/{behind}", headers=auth)
        return bool(found.json()["queue_position"] == 0)

    assert before.json()["queue_position"] == 1
    await eventually(moved_up)


async def test_another_account_or_mode_is_not_answered_from_memory(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth, job_id = await _funded_job(client, running_mesh)
    await client.get(f"/v1/jobs/{job_id}", headers=auth)  # now in memory
    stranger = await client.post("/v1/accounts", json={"email": "grace@example.com"})
    test_key = await client.post("/v1/api_keys", json={"name": "t", "mode": "test"}, headers=auth)

    for other in (stranger.json()["api_key"]["token"], test_key.json()["token"]):
        found = await client.get(f"/v1/jobs/{job_id}", headers=bearer(other))
        assert found.status_code == 404, found.text


@pytest.mark.redis
async def test_a_change_through_one_gateway_reaches_another_s_memory(
    database: Database, tmp_path: Path
) -> None:
    """Views kept an hour: only the announcement on Redis can make the second gateway see
    the cancel."""
    data_dir = tmp_path / "mesh"
    kept = {"job_cache_seconds": 3600, "redis_url": REDIS_URL}
    services = ("auth", "billing", "assets", "jobs")
    async with (
        gateway_client(database, data_dir, only=services, **kept) as (first, one),
        gateway_client(database, data_dir, only=(), **kept) as (second, other),
    ):
        auth, job_id = await _funded_job(one, first)
        await eventually(lambda: _views_following(second))
        seen = await other.get(f"/v1/jobs/{job_id}", headers=auth)
        await one.post(f"/v1/jobs/{job_id}/cancel", headers=auth)

        async def canceled_there() -> bool:
            found = await other.get(f"/v1/jobs/{job_id}", headers=auth)
            return bool(found.json()["status"] == "canceled")

        await eventually(canceled_there)
    assert seen.json()["status"] == "queued"


async def test_a_gateway_that_cannot_hear_the_jobs_service_answers_no_poll_from_memory(
    database: Database, tmp_path: Path
) -> None:
    """Two processes on in-process buses (no Redis), as `serve` runs them: the jobs service's
    announcements never reach the second gateway, so a view it kept would stay stale."""
    data_dir = tmp_path / "mesh"
    kept = {"job_cache_seconds": 3600}
    services = ("auth", "billing", "assets", "jobs")
    async with (
        gateway_client(database, data_dir, only=services, **kept) as (first, one),
        gateway_client(database, data_dir, only=(), **kept) as (_, other),
    ):
        auth, job_id = await _funded_job(one, first)
        seen = await other.get(f"/v1/jobs/{job_id}", headers=auth)
        await one.post(f"/v1/jobs/{job_id}/cancel", headers=auth)

        after = await other.get(f"/v1/jobs/{job_id}", headers=auth)

    assert seen.json()["status"] == "queued"
    assert after.json()["status"] == "canceled"


async def _views_following(running: RunningMesh) -> bool:
    return gateway_state(running).job_views.cache.following


_OWNER = Principal("acct_1", "key_1", True, frozenset({"jobs:read"}))


def _job(state: int = jobs_pb2.JOB_STATE_QUEUED) -> jobs_pb2.Job:
    return jobs_pb2.Job(id="job_1", account_id="acct_1", livemode=True, state=state)


def _following_views() -> JobViews:
    views = JobViews(ttl=3600)
    views.cache.following = True
    return views


def test_a_read_that_began_before_a_change_is_not_kept() -> None:
    views = _following_views()
    ticket = views.ticket()
    views.heard(b"job_1")  # announced while the read was on its way

    views.put(_job(), b"{}", ticket)

    assert views.get("job_1", _OWNER) is None
    views.put(_job(), b"{}", views.ticket())
    assert views.get("job_1", _OWNER) is not None


def test_a_queue_move_makes_queued_views_stale_but_not_ended_ones() -> None:
    views = _following_views()
    views.put(_job(), b"queued", views.ticket())
    ended = jobs_pb2.Job(
        id="job_2", account_id="acct_1", livemode=True, state=jobs_pb2.JOB_STATE_COMPLETED
    )
    views.put(ended, b"completed", views.ticket())

    views.heard(b"job_3 queue")  # another job left the queue

    assert views.get("job_1", _OWNER) is None
    found = views.get("job_2", _OWNER)
    assert found is not None
    assert found.body == b"completed"


def test_nothing_is_kept_while_changes_are_not_followed() -> None:
    views = JobViews(ttl=3600)
    views.put(_job(), b"{}", views.ticket())
    assert views.get("job_1", _OWNER) is None

    views.cache.following = True
    views.put(_job(), b"{}", views.ticket())
    views.cache.stop_following()
    assert views.get("job_1", _OWNER) is None
