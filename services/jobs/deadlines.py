"""Deadlines: a job not ended by its `deadline_at` is canceled, wherever it is, and its hold is
released.

Each jobs process keeps one timer, set for the earliest deadline of a queued or running job as
the database holds it: read at start (so deadlines outlive a restart), again when the timer
fires, and when a job with an earlier deadline is queued (a hint on the bus, from any process).
No loop reads the jobs. Every process may fire the same deadline: the cancel is the guarded
UPDATE every move is, so it ends a job only if no completion, failure or cancel did first.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.bus import EventBus
from magicpixels.core.timestamps import as_utc, utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import store
from magicpixels.services.jobs.settlement import Settlement
from magicpixels.services.jobs.signals import announce

DEADLINE_EXCEEDED = jobs_pb2.JobError(
    code="deadline_exceeded", message="the job did not complete before its deadline"
)
# Hints are lossy (a Redis outage drops them): the timer reads the earliest deadline again at
# least this often, so a deadline whose hint was lost fires this late at worst.
RECHECK_SECONDS = 60.0
# After the database failed, the timer tries again this soon.
RETRY_SECONDS = 1.0

log = structlog.get_logger("magicpixels.jobs")


class DeadlineTimer:
    def __init__(self, engine: AsyncEngine, settlement: Settlement, bus: EventBus) -> None:
        self._engine = engine
        self._settlement = settlement
        self._bus = bus
        # The deadline the timer is set for; None while it is being read, or when no job has one.
        self._next: datetime | None = None
        self._reading = True
        self._earlier = asyncio.Event()

    def note(self, deadline: datetime) -> None:
        """A job with this deadline was queued: the timer is set again if it fires later, or
        while the earliest deadline is being read (the read may have missed this job)."""
        if self._reading or self._next is None or deadline < self._next:
            self._earlier.set()

    async def follow(self, hints: AsyncIterator[bytes]) -> None:
        """Notes the deadline of every job queued, in this process or any other."""
        async for message in hints:
            self.note(as_utc(datetime.fromisoformat(message.decode())))

    async def run(self) -> None:
        while True:
            self._reading = True
            self._earlier.clear()
            try:
                self._next = await self.fire(utcnow())
                seconds = _seconds_until(self._next)
            except Exception:  # the database is down: try again soon
                log.exception("deadlines_failed")
                self._next, seconds = None, RETRY_SECONDS
            self._reading = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._earlier.wait(), seconds)

    async def fire(self, now: datetime) -> datetime | None:
        """Cancels the jobs whose deadline has passed and releases their holds; the earliest
        deadline left."""
        overdue = await store.cancel_overdue(self._engine, DEADLINE_EXCEEDED, now)
        await announce(self._bus, *overdue)
        for job in overdue:
            self._settlement.settle_soon(job)
        return await store.next_deadline(self._engine)


def _seconds_until(deadline: datetime | None) -> float:
    if deadline is None:
        return RECHECK_SECONDS
    return min(max((deadline - utcnow()).total_seconds(), 0.0), RECHECK_SECONDS)
