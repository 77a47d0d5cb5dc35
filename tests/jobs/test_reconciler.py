"""The reconciler's passes, run at chosen times against the store and the billing double."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.service import Mesh
from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.jobs import domain, store
from magicpixels.services.jobs.domain import HoldStatus, State
from magicpixels.services.jobs.reconciler import Reconciler
from magicpixels.services.jobs.settlement import Settlement
from magicpixels.services.jobs.signals import QUEUED_CHANNEL
from magicpixels.services.jobs.store import JobRow

from tests.conftest import Database
from tests.jobs.conftest import ACCOUNT, BillingDouble, jobs_settings, text_to_image

LEASE = timedelta(seconds=30)


@dataclass
class World:
    engine: AsyncEngine
    mesh: Mesh
    billing: BillingDouble
    settlement: Settlement
    reconciler: Reconciler

    async def queued_job(self) -> JobRow:
        self.billing.grant(ACCOUNT, 1)
        spec = domain.resolve_spec(text_to_image())
        pending = await store.insert_pending(self.engine, ACCOUNT, True, spec, utcnow())
        return await self.settlement.hold(pending, spec)

    async def lease(self, now: datetime) -> JobRow | None:
        return await store.lease_next(self.engine, ["text_to_image"], "worker-1", LEASE, now)

    async def leased_job(self, now: datetime) -> JobRow:
        job = await self.lease(now)
        assert job is not None
        return job

    async def current(self, job: JobRow) -> JobRow:
        found = await store.get_job(self.engine, job.id)
        assert found is not None
        return found


@pytest.fixture
def world(engine: AsyncEngine, mesh: Mesh, billing: BillingDouble, database: Database) -> World:
    settlement = Settlement(engine, mesh)
    reconciler = Reconciler(engine, settlement, mesh.bus, jobs_settings(database, max_attempts=2))
    return World(engine, mesh, billing, settlement, reconciler)


async def test_an_expired_lease_is_queued_again_and_announced(world: World) -> None:
    job = await world.queued_job()
    now = utcnow()
    leased = await world.leased_job(now)

    async with world.mesh.bus.subscribe(QUEUED_CHANNEL) as hints:
        await world.reconciler.expire_leases(now + LEASE / 2)
        still_running = await world.current(job)
        await world.reconciler.expire_leases(now + LEASE * 2)
        hint = await anext(hints)
    again = await world.leased_job(now + LEASE * 2)

    assert still_running.state == State.RUNNING
    assert hint == b"text_to_image"
    assert (again.id, again.attempts, again.lease_token) == (job.id, 2, leased.lease_token + 1)


async def test_an_expired_lease_out_of_attempts_fails_and_releases(world: World) -> None:
    job = await world.queued_job()
    now = utcnow()
    await world.leased_job(now)
    await world.reconciler.expire_leases(now + LEASE * 2)
    await world.leased_job(now + LEASE * 2)

    await world.reconciler.expire_leases(now + LEASE * 4)

    failed = await world.current(job)
    assert (failed.state, failed.error_code, failed.attempts) == (State.FAILED, "lease_expired", 2)
    assert failed.billing == HoldStatus.RELEASED
    assert world.billing.released == [job.id]
    assert world.billing.available[ACCOUNT] == 1


async def test_a_stale_pending_job_has_its_hold_released_and_fails(world: World) -> None:
    world.billing.grant(ACCOUNT, 1)
    spec = domain.resolve_spec(text_to_image())
    created = utcnow()
    # CreateJob died after Reserve: the credits are held, the job still pending.
    held = await store.insert_pending(world.engine, ACCOUNT, True, spec, created)
    reserve = billing_pb2.ReserveRequest(
        account_id=ACCOUNT,
        reference=held.id,
        usage=billing_pb2.Usage(mode="text_to_image"),
        livemode=True,
    )
    await billing_pb2_grpc.BillingServiceStub(world.mesh.channel("billing")).Reserve(reserve)
    # CreateJob died before Reserve: billing holds nothing for this one.
    never_held = await store.insert_pending(world.engine, ACCOUNT, True, spec, created)

    await world.reconciler.abandon_pending(created + domain.PENDING_TIMEOUT / 2)
    young = await world.current(held)
    await world.reconciler.abandon_pending(created + domain.PENDING_TIMEOUT * 2)

    assert young.state == State.PENDING
    for job in (held, never_held):
        ended = await world.current(job)
        assert (ended.state, ended.billing) == (State.FAILED, HoldStatus.RELEASED)
        assert ended.queued_at is None
    assert world.billing.released == [held.id]
    assert world.billing.available[ACCOUNT] == 1


async def test_a_create_whose_reserve_outcome_is_unknown_is_repaired(
    jobs: jobs_pb2_grpc.JobsServiceStub, world: World
) -> None:
    world.billing.grant(ACCOUNT, 1)
    world.billing.fail_next_with = grpc.StatusCode.UNAVAILABLE
    request = jobs_pb2.CreateJobRequest(account_id=ACCOUNT, livemode=True, spec=text_to_image())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.CreateJob(request)
    [pending] = await store.stale_pending(world.engine, utcnow() + timedelta(seconds=1))
    listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(account_id=ACCOUNT, livemode=True))
    await world.reconciler.abandon_pending(utcnow() + domain.PENDING_TIMEOUT * 2)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert list(listed.jobs) == []
    assert (await world.current(pending)).state == State.FAILED
    assert world.billing.available[ACCOUNT] == 1


async def test_holds_left_unsettled_are_captured_or_released(world: World) -> None:
    completed = await world.queued_job()
    canceled = await world.queued_job()
    now = utcnow()
    token = (await world.leased_job(now)).lease_token
    # Both ended while billing could not be reached: their holds are still marked held.
    result = jobs_pb2.JobResult(asset_id="asset_x")
    await store.complete(world.engine, completed.id, token, result, now)
    await store.cancel(world.engine, canceled.id, ACCOUNT, now)

    await world.reconciler.settle_holds()
    await world.reconciler.settle_holds()

    assert (await world.current(completed)).billing == HoldStatus.CAPTURED
    assert (await world.current(canceled)).billing == HoldStatus.RELEASED
    assert (world.billing.captured, world.billing.released) == ([completed.id], [canceled.id])
    assert world.billing.available[ACCOUNT] == 1


async def test_a_retry_is_announced_when_its_backoff_ends(world: World) -> None:
    job = await world.queued_job()
    now = utcnow()
    token = (await world.leased_job(now)).lease_token
    await store.requeue(world.engine, job.id, token, now + timedelta(seconds=5), now)
    early, late = now + timedelta(seconds=1), now + timedelta(seconds=6)

    async with world.mesh.bus.subscribe(QUEUED_CHANNEL) as hints:
        await world.reconciler.wake_due_retries(early)
        too_early = await world.lease(early)
        await world.reconciler.wake_due_retries(late)
        hint = await anext(hints)
    again = await world.leased_job(late)

    assert too_early is None
    assert hint == b"text_to_image"
    assert (again.id, again.attempts) == (job.id, 2)
