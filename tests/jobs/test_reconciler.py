"""The reconciler's passes, run at chosen times against the store and the real billing service,
which some tests stop and start again to see what the passes repair once it is back."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import idempotency
from magicpixels.core.bus import LocalBus
from magicpixels.core.db import create_engine
from magicpixels.core.errors import Unavailable
from magicpixels.core.holds import Holds
from magicpixels.core.service import Mesh
from magicpixels.core.settings import BillingSettings, MeshSettings
from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.billing.store import BillingStore
from magicpixels.services.jobs import domain, store
from magicpixels.services.jobs.domain import HoldStatus, State
from magicpixels.services.jobs.reconciler import Reconciler
from magicpixels.services.jobs.settlement import Settlement
from magicpixels.services.jobs.signals import QUEUED_CHANNEL
from magicpixels.services.jobs.store import JobRow
from tests.conftest import Database
from tests.jobs.conftest import (
    ACCOUNT,
    PATIENCE_SECONDS,
    Billing,
    claim_of,
    eventually,
    jobs_settings,
    text_to_image,
)

LEASE = timedelta(seconds=30)
RESULT = jobs_pb2.JobResult(asset_id="asset_x")
BACKEND_ERROR = jobs_pb2.JobError(code="backend_error", message="the backend crashed")


@dataclass
class World:
    engine: AsyncEngine
    mesh: Mesh
    billing: Billing
    settlement: Settlement
    reconciler: Reconciler

    async def pending_job(self, created: datetime) -> JobRow:
        spec = domain.resolve_spec(text_to_image())
        pending = await store.insert_pending(self.engine, ACCOUNT, True, spec, None, created)
        assert pending is not None
        return pending

    async def queued_job(self) -> JobRow:
        await self.billing.grant(1)
        pending = await self.pending_job(utcnow())
        return (await self.settlement.hold(pending, store.spec_of(pending))).job

    async def reserve(self, job: JobRow) -> None:
        """Holds the job's credits as its CreateJob's Reserve does."""
        reserve = billing_pb2.ReserveRequest(
            account_id=ACCOUNT,
            reference=job.id,
            usage=billing_pb2.Usage(mode="text_to_image"),
            livemode=True,
        )
        await self.billing.stub.Reserve(reserve)

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

    async def all_jobs(self) -> list[JobRow]:
        async with self.engine.connect() as connection:
            return list((await connection.execute(select(store.jobs))).all())


@pytest.fixture
def world(engine: AsyncEngine, mesh: Mesh, billing: Billing, database: Database) -> World:
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


async def test_an_expired_lease_out_of_attempts_fails_and_is_released(world: World) -> None:
    job = await world.queued_job()
    now = utcnow()
    await world.leased_job(now)
    await world.reconciler.expire_leases(now + LEASE * 2)
    await world.leased_job(now + LEASE * 2)

    await world.reconciler.expire_leases(now + LEASE * 4)
    failed = await world.current(job)
    await world.reconciler.settle_holds()

    assert (failed.state, failed.error_code, failed.attempts) == (State.FAILED, "lease_expired", 2)
    # Expiring leases waits for no billing call: the settling pass releases the hold.
    assert failed.billing == HoldStatus.HELD
    assert (await world.current(job)).billing == HoldStatus.RELEASED
    assert await world.billing.settled() == ([], [job.id])
    assert await world.billing.balance() == (1, 0)


async def test_a_stale_pending_job_has_its_hold_released_and_fails(world: World) -> None:
    await world.billing.grant(1)
    created = utcnow()
    # CreateJob died after Reserve: the credits are held, the job still pending.
    held = await world.pending_job(created)
    await world.reserve(held)
    # CreateJob died before Reserve: billing holds nothing for this one.
    never_held = await world.pending_job(created)

    await world.reconciler.abandon_pending(created + domain.PENDING_TIMEOUT / 2)
    young = await world.current(held)
    await world.reconciler.abandon_pending(created + domain.PENDING_TIMEOUT * 2)

    assert young.state == State.PENDING
    for job in (held, never_held):
        ended = await world.current(job)
        assert (ended.state, ended.billing) == (State.FAILED, HoldStatus.RELEASED)
        assert ended.queued_at is None
    assert await world.billing.held() == [held.id]
    assert await world.billing.settled() == ([], [held.id])
    assert await world.billing.balance() == (1, 0)


async def test_a_create_whose_reserve_outcome_is_unknown_is_repaired(
    jobs: jobs_pb2_grpc.JobsServiceStub, world: World
) -> None:
    await world.billing.grant(1)
    await world.billing.stop()
    request = jobs_pb2.CreateJobRequest(account_id=ACCOUNT, livemode=True, spec=text_to_image())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.CreateJob(request)
    [pending] = await world.all_jobs()
    listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(account_id=ACCOUNT, livemode=True))
    await world.billing.restart()
    await world.reconciler.abandon_pending(utcnow() + domain.PENDING_TIMEOUT * 2)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert pending.state == State.PENDING
    assert list(listed.jobs) == []
    assert (await world.current(pending)).state == State.FAILED
    assert await world.billing.held() == []
    assert await world.billing.balance() == (1, 0)


async def test_holds_left_unsettled_are_captured_or_released(world: World) -> None:
    completed = await world.queued_job()
    canceled = await world.queued_job()
    now = utcnow()
    token = (await world.leased_job(now)).lease_token
    await world.billing.stop()
    # Both end while billing cannot be reached: their holds stay marked held.
    ended = [
        await store.complete(world.engine, completed.id, token, RESULT, now),
        await store.cancel(world.engine, canceled.id, ACCOUNT, now),
    ]
    for job in ended:
        assert job is not None
        await world.settlement.settle(job)
    deferred = [(await world.current(job)).billing for job in (completed, canceled)]
    await world.billing.restart()

    await world.reconciler.settle_holds()
    await world.reconciler.settle_holds()

    assert deferred == [HoldStatus.HELD, HoldStatus.HELD]
    assert (await world.current(completed)).billing == HoldStatus.CAPTURED
    assert (await world.current(canceled)).billing == HoldStatus.RELEASED
    assert await world.billing.settled() == ([completed.id], [canceled.id])
    assert await world.billing.balance() == (1, 0)


Ending = Callable[[AsyncEngine, str, int, datetime], Awaitable[JobRow | None]]


async def _complete(engine: AsyncEngine, job_id: str, token: int, now: datetime) -> JobRow | None:
    return await store.complete(engine, job_id, token, RESULT, now)


async def _fail(engine: AsyncEngine, job_id: str, token: int, now: datetime) -> JobRow | None:
    return await store.fail(engine, job_id, token, BACKEND_ERROR, now)


async def expire_billing_holds(settings: BillingSettings, mesh: Mesh) -> None:
    """Runs billing's hold sweeper past the expiry of every hold it has."""
    engine = create_engine(
        settings.database_url_for(mesh.settings, "billing"), schema=settings.database_schema
    )
    try:
        later = utcnow() + timedelta(seconds=settings.hold_timeout_seconds + 1)
        await BillingStore(engine).expire_holds(later)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(_fail, id="failed"),
        # Billing refuses the capture: FAILED_PRECONDITION, HOLD_ALREADY_RESOLVED.
        pytest.param(_complete, id="completed"),
    ],
)
async def test_a_hold_billing_expired_settles_its_ended_job_as_released(
    world: World, billing_settings: BillingSettings, end: Ending
) -> None:
    job = await world.queued_job()
    now = utcnow()
    token = (await world.leased_job(now)).lease_token
    # The job outlived its hold: billing's sweeper gave the credits back.
    await expire_billing_holds(billing_settings, world.mesh)
    ended = await end(world.engine, job.id, token, now)
    assert ended is not None

    await world.settlement.settle(ended)
    await world.reconciler.settle_holds()

    # The mirror says what billing did: the hold ended without a capture.
    assert (await world.current(job)).billing == HoldStatus.RELEASED
    assert await store.unsettled(world.engine) == []
    assert await world.billing.references(billing_pb2.LEDGER_ENTRY_KIND_EXPIRY) == [job.id]
    assert await world.billing.settled() == ([], [])
    assert await world.billing.balance() == (1, 0)


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


class _QueuesBeforeRelease:
    """Billing as the settlement reaches it, where something happens just before each Release."""

    def __init__(
        self, stub: billing_pb2_grpc.BillingServiceStub, before: Callable[[], Awaitable[None]]
    ) -> None:
        self._stub = stub
        self._before = before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def Release(self, request: billing_pb2.ReleaseRequest, **call: Any) -> billing_pb2.Hold:
        await self._before()
        return await self._stub.Release(request, **call)


async def test_a_job_abandoned_as_its_create_queues_it_is_not_run_without_a_hold(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.billing.grant(1)
    created = utcnow()
    job = await world.pending_job(created)
    await world.reserve(job)
    queued: list[store.Queued | None] = []

    async def create_job_queues_it() -> None:
        # The late CreateJob's Reserve returned: it queues the job while it is being abandoned.
        queued.append(await store.mark_queued(world.engine, job, 1, utcnow()))

    billing = _QueuesBeforeRelease(world.settlement._billing(), create_job_queues_it)
    monkeypatch.setattr(world.settlement, "_holds", Holds(lambda: billing, seconds=5))
    await world.reconciler.abandon_pending(created + domain.PENDING_TIMEOUT * 2)

    assert queued == [None]
    ended = await world.current(job)
    assert (ended.state, ended.billing) == (State.FAILED, HoldStatus.RELEASED)
    assert ended.queued_at is None
    assert await world.billing.settled() == ([], [job.id])
    assert await world.billing.balance() == (1, 0)


async def test_a_create_that_finds_its_job_abandoned_releases_its_hold(world: World) -> None:
    await world.billing.grant(1)
    created = utcnow()
    job = await world.pending_job(created)
    # Abandoned before its Reserve lands: billing holds nothing yet, there is nothing to release.
    await world.reconciler.abandon_pending(created + domain.PENDING_TIMEOUT * 2)

    with pytest.raises(Unavailable) as caught:
        await world.settlement.hold(job, store.spec_of(job))

    assert caught.value.reason == "JOB_ABANDONED"
    ended = await world.current(job)
    assert (ended.state, ended.billing) == (State.FAILED, HoldStatus.RELEASED)
    assert ended.queued_at is None
    assert await world.billing.held() == [job.id]
    assert await world.billing.settled() == ([], [job.id])
    assert await world.billing.balance() == (1, 0)


async def test_a_settlement_waits_while_the_mesh_does_not_know_billing(
    world: World, tmp_path: Path
) -> None:
    job = await world.queued_job()
    now = utcnow()
    token = (await world.leased_job(now)).lease_token
    ended = await store.complete(world.engine, job.id, token, RESULT, now)
    assert ended is not None
    settings = MeshSettings(data_dir=tmp_path / "no-billing", service_token="test-service-token")
    # Billing has not started yet, as far as this mesh knows.
    without_billing = Mesh(settings, LocalBus())

    await Settlement(world.engine, without_billing).settle(ended)

    assert (await world.current(job)).billing == HoldStatus.HELD
    await world.reconciler.settle_holds()
    assert (await world.current(job)).billing == HoldStatus.CAPTURED


async def test_a_release_billing_refuses_of_a_captured_hold_mirrors_the_capture(
    world: World,
) -> None:
    job = await world.queued_job()
    now = utcnow()
    token = (await world.leased_job(now)).lease_token
    await world.billing.stub.Capture(billing_pb2.CaptureRequest(reference=job.id))
    failed = await store.fail(world.engine, job.id, token, BACKEND_ERROR, now)
    assert failed is not None

    await world.settlement.settle(failed)

    assert (await world.current(job)).billing == HoldStatus.CAPTURED
    assert await store.unsettled(world.engine) == []
    assert await world.billing.settled() == ([job.id], [])


async def test_leases_expire_while_a_settlement_hangs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await world.queued_job()
    now = utcnow()
    token = (await world.leased_job(now)).lease_token
    await store.complete(world.engine, job.id, token, RESULT, now)
    settling = asyncio.Event()

    async def settle_forever(job: JobRow) -> None:
        settling.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(world.settlement, "settle", settle_forever)
    async with running(world.reconciler):
        await asyncio.wait_for(settling.wait(), PATIENCE_SECONDS)
        silent = await world.queued_job()
        # Leased long ago: the lease is already over.
        await world.leased_job(utcnow() - LEASE * 2)

        async def queued_again() -> bool:
            return (await world.current(silent)).state == State.QUEUED

        await eventually(queued_again)


@asynccontextmanager
async def running(reconciler: Reconciler) -> AsyncIterator[None]:
    task = asyncio.create_task(reconciler.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_idempotency_keys_are_forgotten_after_a_day(world: World) -> None:
    claim = claim_of(True, text_to_image())
    spec = domain.resolve_spec(text_to_image())
    created = utcnow()
    await store.insert_pending(world.engine, ACCOUNT, True, spec, claim, created)

    await world.reconciler.forget_idempotency_keys(created + idempotency.WINDOW / 2)
    kept = await store.claimed(world.engine, ACCOUNT, "key-1")
    await world.reconciler.forget_idempotency_keys(created + idempotency.WINDOW * 2)

    assert kept is not None
    assert await store.claimed(world.engine, ACCOUNT, "key-1") is None
