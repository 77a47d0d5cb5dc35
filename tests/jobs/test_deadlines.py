"""Deadlines: queued and running jobs canceled when theirs passes, holds released once, the race
with a completion ending one way, and deadlines that outlive a restart of the jobs service."""

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.service import Mesh
from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import store
from magicpixels.services.jobs.deadlines import DEADLINE_EXCEEDED
from magicpixels.services.jobs.domain import HoldStatus, State
from magicpixels.services.jobs.store import JobRow
from tests.conftest import Database
from tests.jobs.conftest import ACCOUNT, Billing, jobs_server, jobs_settings, text_to_image
from tests.jobs.test_server import (
    LEASE_LOST,
    RESULT,
    Stub,
    complete,
    create,
    get,
    lease,
    progress,
    refusal,
)
from tests.support import eventually


async def pending(engine: AsyncEngine, now: datetime, deadline_seconds: int) -> JobRow:
    spec = text_to_image(deadline_seconds=deadline_seconds)
    job = await store.insert_pending(engine, ACCOUNT, True, spec, None, now)
    assert job is not None
    return job


async def ended(jobs: Stub, job_id: str) -> jobs_pb2.Job:
    """The job once it ended, which the deadline timer brings about."""
    found = jobs_pb2.Job()

    async def has_ended() -> bool:
        nonlocal found
        found = await get(jobs, job_id)
        return found.state in (jobs_pb2.JOB_STATE_CANCELED, jobs_pb2.JOB_STATE_COMPLETED)

    await eventually(has_ended)
    return found


async def test_a_queued_job_is_canceled_at_its_deadline_without_a_worker(
    jobs: Stub, billing: Billing
) -> None:
    await billing.grant(2)
    job = await create(jobs, deadline_seconds=1)
    without = await create(jobs)

    canceled = await ended(jobs, job.id)

    assert canceled.state == jobs_pb2.JOB_STATE_CANCELED
    assert canceled.error == DEADLINE_EXCEEDED
    assert canceled.complete_time.ToDatetime() >= canceled.deadline_time.ToDatetime()
    assert not canceled.HasField("queue_position")
    assert (await get(jobs, without.id)).queue_position == 0
    await billing.settle_to([], [job.id])
    assert await billing.balance() == (1, 1)


async def test_a_running_job_is_stopped_at_its_next_heartbeat(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    job = await create(jobs, deadline_seconds=1)
    held = (await lease(jobs)).lease

    canceled = await ended(jobs, job.id)
    heartbeat = await progress(jobs, job.id, held.token, 0.9)
    completion = await refusal(complete(jobs, job.id, held.token))

    assert canceled.state == jobs_pb2.JOB_STATE_CANCELED
    assert canceled.error.code == "deadline_exceeded"
    assert heartbeat.canceled
    assert completion == LEASE_LOST
    await billing.settle_to([], [job.id])
    assert await billing.balance() == (1, 0)


async def test_deadlines_fire_after_a_restart_of_the_jobs_service(
    mesh: Mesh, database: Database, billing: Billing
) -> None:
    await billing.grant(2)
    settings = jobs_settings(database)
    async with jobs_server(mesh, settings) as jobs:
        running = await create(jobs, deadline_seconds=4)
        held = (await lease(jobs)).lease
        queued = await create(jobs, deadline_seconds=4)
    # Stopped before the deadline; the next start learns of it only from the database.
    assert utcnow() < queued.deadline_time.ToDatetime().replace(tzinfo=utcnow().tzinfo)

    async with jobs_server(mesh, settings) as jobs:
        first, second = await ended(jobs, queued.id), await ended(jobs, running.id)
        heartbeat = await progress(jobs, running.id, held.token, 0.5)

    assert held.job.id == running.id
    assert {first.error.code, second.error.code} == {"deadline_exceeded"}
    assert heartbeat.canceled
    await billing.settle_to([], [queued.id, running.id])
    assert await billing.balance() == (2, 0)


async def test_a_completion_racing_the_deadline_ends_each_job_one_way(
    jobs: Stub, billing: Billing
) -> None:
    """Jobs each completed within 30 ms of its deadline, before or after, in two rounds: each
    job ends completed and charged or canceled and refunded, never both, and each worker's
    answer agrees with the job. (A job whose deadline passed before a worker leased it, on a
    slow machine, is canceled while queued: also refunded.)"""
    rounds, per_round = 2, 24
    await billing.grant(rounds * per_round)
    states: dict[str, int] = {}
    for _ in range(rounds):
        created = [await create(jobs, deadline_seconds=2) for _ in range(per_round)]
        leases = []
        while (leased := await lease(jobs)).HasField("lease"):
            leases.append(leased.lease)

        async def complete_near(index: int, held: jobs_pb2.Lease) -> bool:
            deadline = held.job.deadline_time.ToDatetime().replace(tzinfo=UTC)
            # From 30 ms before its deadline to 30 ms after it, 5 ms apart along the jobs.
            at = deadline + timedelta(milliseconds=5 * (index % 13) - 30)
            await asyncio.sleep(max((at - utcnow()).total_seconds(), 0))
            try:
                await complete(jobs, held.job.id, held.token)
            except grpc.aio.AioRpcError:
                return False
            return True

        answers = await asyncio.gather(
            *(complete_near(index, held) for index, held in enumerate(leases))
        )
        completed = {held.job.id for held, done in zip(leases, answers, strict=True) if done}
        for job in created:
            found = await ended(jobs, job.id)
            if job.id in completed:
                assert found.state == jobs_pb2.JOB_STATE_COMPLETED
            else:
                assert found.state == jobs_pb2.JOB_STATE_CANCELED
                assert found.error.code == "deadline_exceeded"
            states[job.id] = found.state

    done = [job_id for job_id, state in states.items() if state == jobs_pb2.JOB_STATE_COMPLETED]
    undone = [job_id for job_id, state in states.items() if state == jobs_pb2.JOB_STATE_CANCELED]
    await billing.settle_to(done, undone)
    assert await billing.balance() == (len(undone), 0)


async def test_the_store_ends_a_job_one_way_when_completion_and_deadline_race(
    engine: AsyncEngine,
) -> None:
    """Many rounds of the two guarded UPDATEs at once, on one running job each."""
    for _ in range(40):
        created = utcnow()
        job = await pending(engine, created, deadline_seconds=1)
        await store.mark_queued(engine, job, 1, created)
        leased = await store.lease_next(
            engine, ["text_to_image"], "worker-1", timedelta(seconds=30), created
        )
        assert leased is not None
        assert leased.id == job.id
        past = created + timedelta(seconds=2)

        completed, canceled = await asyncio.gather(
            store.complete(engine, leased.id, leased.lease_token, RESULT, past),
            store.cancel_overdue(engine, DEADLINE_EXCEEDED, past),
        )

        current = await store.get_job(engine, leased.id)
        assert current is not None
        assert (completed is None) != (canceled == [])
        assert current.state == (State.COMPLETED if completed else State.CANCELED)
        assert current.error_code == (None if completed else "deadline_exceeded")
        assert current.billing == HoldStatus.HELD  # left for settling, one way


async def test_the_next_deadline_is_that_of_a_queued_or_running_job(engine: AsyncEngine) -> None:
    created = utcnow()
    assert await store.next_deadline(engine) is None
    later = await pending(engine, created, deadline_seconds=60)
    sooner = await pending(engine, created, deadline_seconds=30)
    unqueued = await pending(engine, created, deadline_seconds=1)
    for job in (later, sooner):
        await store.mark_queued(engine, job, 1, created)

    assert await store.next_deadline(engine) == created + timedelta(seconds=30)
    await store.cancel_overdue(engine, DEADLINE_EXCEEDED, created + timedelta(seconds=45))
    assert await store.next_deadline(engine) == created + timedelta(seconds=60)
    states = [await store.get_job(engine, job.id) for job in (sooner, unqueued, later)]
    assert [job.state for job in states if job] == [State.CANCELED, State.PENDING, State.QUEUED]
