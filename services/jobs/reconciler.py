"""Repairs what crashes and lost calls leave behind, so every accepted job ends and every hold
is resolved.

Each pass is a set of guarded transitions and idempotent billing calls: any number of jobs
processes may run it at the same time.
"""

import asyncio
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.bus import EventBus
from magicpixels.core.settings import JobsSettings
from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import store
from magicpixels.services.jobs.domain import PENDING_TIMEOUT, HoldStatus
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
        while True:
            try:
                await self.reconcile(utcnow())
            except Exception:  # a peer or the database is down: the next pass tries again
                log.exception("reconcile_failed")
            await asyncio.sleep(self._settings.reconcile_interval_seconds)

    async def reconcile(self, now: datetime) -> None:
        # The passes that need billing least come first: a billing outage stops a pass.
        await self.expire_leases(now)
        await self.wake_due_retries(now)
        await self.settle_holds()
        await self.abandon_pending(now)

    async def expire_leases(self, now: datetime) -> None:
        """Queues again the jobs whose worker went silent, or fails them when out of attempts."""
        expired = await store.expire_leases(
            self._engine, self._settings.max_attempts, LEASE_EXPIRED, now
        )
        await announce(self._bus, *expired)
        for job in expired:
            await self._settlement.settle(job)

    async def abandon_pending(self, now: datetime) -> None:
        """Fails the jobs whose CreateJob never learnt whether credits were held, releasing any."""
        for job in await store.stale_pending(self._engine, now - PENDING_TIMEOUT):
            await self._settlement.release_unconfirmed(job.id)
            await store.fail_pending(self._engine, job.id, ABANDONED, HoldStatus.RELEASED, now)

    async def settle_holds(self) -> None:
        """Retries the captures and releases that failed when their job ended."""
        for job in await store.unsettled(self._engine):
            await self._settlement.settle(job)

    async def wake_due_retries(self, now: datetime) -> None:
        """Wakes idle workers for the retried jobs whose backoff has passed."""
        await announce(self._bus, *await store.clear_due_retries(self._engine, now))
