"""Repairs what crashes and lost calls leave behind, so every accepted job ends and every hold
is resolved.

Each pass is a set of guarded transitions and idempotent billing calls: any number of jobs
processes may run it at the same time. Each repeats on its own, so a pass held up by billing
holds up no other.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core import idempotency, metrics
from magicpixels.core.bus import EventBus
from magicpixels.core.settings import JobsSettings
from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import store
from magicpixels.services.jobs.domain import MODES, PENDING_TIMEOUT, State
from magicpixels.services.jobs.settlement import Settlement
from magicpixels.services.jobs.signals import announce

LEASE_EXPIRED = jobs_pb2.JobError(
    code="lease_expired", message="the worker stopped reporting progress on every attempt"
)
ABANDONED = jobs_pb2.JobError(
    code="creation_abandoned", message="the job was never queued: its credit hold was not confirmed"
)

log = structlog.get_logger("magicpixels.jobs")


class Reconciler:
    def __init__(
        self, engine: AsyncEngine, settlement: Settlement, bus: EventBus, settings: JobsSettings
    ) -> None:
        self._engine = engine
        self._settlement = settlement
        self._bus = bus
        self._settings = settings

    async def run(self) -> None:
        """Repeats every pass in a task of its own: a pass waiting on billing delays no other."""
        async with asyncio.TaskGroup() as passes:
            for name, reconcile in self._passes().items():
                passes.create_task(self._repeat(name, reconcile))

    def _passes(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {
            "expire_leases": lambda: self.expire_leases(utcnow()),
            "wake_due_retries": lambda: self.wake_due_retries(utcnow()),
            "settle_holds": self.settle_holds,
            "abandon_pending": lambda: self.abandon_pending(utcnow()),
            "forget_idempotency_keys": lambda: self.forget_idempotency_keys(utcnow()),
            "measure_queues": self.measure_queues,
        }

    async def _repeat(self, name: str, reconcile: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await reconcile()
            except Exception:  # a peer or the database is down: the next pass tries again
                log.exception("reconcile_failed", reconcile_pass=name)
            await asyncio.sleep(self._settings.reconcile_interval_seconds)

    async def expire_leases(self, now: datetime) -> None:
        """Queues again the jobs whose worker went silent, or fails them when out of attempts.

        Their holds are left to `settle_holds`, so that this pass never waits for billing.
        """
        expired = await store.expire_leases(
            self._engine, self._settings.max_attempts, LEASE_EXPIRED, now
        )
        for job in expired:
            metrics.LEASES_EXPIRED.labels("jobs", job.mode).inc()
            if job.state == State.QUEUED:
                metrics.JOB_RETRIES.labels("jobs", job.mode).inc()
        await announce(self._bus, *expired)

    async def abandon_pending(self, now: datetime) -> None:
        """Fails the jobs whose CreateJob never learnt whether credits were held, releasing any.

        The job is failed before its hold is released: a CreateJob that queues it after its
        Reserve finds it failed and releases the hold itself, so no job runs without one.
        """
        for job in await store.abandon_pending(self._engine, now - PENDING_TIMEOUT, ABANDONED, now):
            await self._settlement.settle(job)

    async def forget_idempotency_keys(self, now: datetime) -> None:
        """Frees the idempotency keys past their window."""
        await idempotency.forget(self._engine, store.idempotency_keys, now - idempotency.WINDOW)

    async def settle_holds(self) -> None:
        """Retries the captures and releases that failed when their job ended."""
        for job in await store.unsettled(self._engine):
            await self._settlement.settle(job)

    async def measure_queues(self) -> None:
        """Sets the queue gauges: how many jobs of each mode wait, and the oldest's age."""
        metrics.set_queue("jobs", MODES, await store.queued_by_mode(self._engine), utcnow())

    async def wake_due_retries(self, now: datetime) -> None:
        """Wakes idle workers for the retried jobs whose backoff has passed."""
        await announce(self._bus, *await store.clear_due_retries(self._engine, now))
