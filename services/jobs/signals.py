"""Hints on the event bus: a job changed (for its watchers), a job was queued (for idle workers),
a job's move enqueued a webhook delivery (for the webhook dispatchers).

Hints are lossy by design: the database holds the truth, a watcher reads the job again on
every hint, and a waiting worker looks for work again when its wait ends.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from redis.exceptions import RedisError

from magicpixels.core import metrics
from magicpixels.core.bus import EventBus
from magicpixels.services.jobs.domain import TERMINAL, State
from magicpixels.services.jobs.store import JobRow, webhook_event_of

QUEUED_CHANNEL = "jobs.queued"
WEBHOOKS_CHANNEL = "jobs.webhooks"

log = structlog.get_logger("magicpixels.jobs")


def changed_channel(job_id: str) -> str:
    return f"jobs.changed.{job_id}"


async def announce(bus: EventBus, *jobs: JobRow) -> None:
    """Tells watchers that these jobs moved, idle workers about the queued ones, and webhook
    dispatchers about the deliveries the moves enqueued."""
    for job in jobs:
        if job.state in TERMINAL:  # every move is announced once, by the caller that won it
            metrics.JOBS_ENDED.labels("jobs", job.mode, job.state).inc()
        await _publish(bus, changed_channel(job.id), job.state.encode())
        if job.state == State.QUEUED:
            await _publish(bus, QUEUED_CHANNEL, job.mode.encode())
        if webhook_event_of(job):
            await _publish(bus, WEBHOOKS_CHANNEL, job.id.encode())


async def announce_progress(bus: EventBus, job: JobRow) -> None:
    """Tells the job's watchers of its progress: a change that moves it nowhere, so it made no
    webhook event."""
    await _publish(bus, changed_channel(job.id), job.state.encode())


async def _publish(bus: EventBus, channel: str, message: bytes) -> None:
    try:
        await bus.publish(channel, message)
    except RedisError:
        # The change is committed; failing the call now would only make its caller repeat it.
        log.warning("hint_not_published", channel=channel, exc_info=True)


class QueueSignal:
    """Wakes what waits for work in this process: LeaseJob calls, the webhook dispatcher.

    A caller takes a ticket before it looks for work and waits on that ticket, so a job queued
    between the look and the wait still wakes it.
    """

    def __init__(self) -> None:
        self._next = asyncio.Event()

    def ticket(self) -> asyncio.Event:
        return self._next

    def notify(self) -> None:
        self._next.set()
        self._next = asyncio.Event()

    async def follow(self, hints: AsyncIterator[bytes]) -> None:
        """Notifies on every queued-job hint, from this process or any other."""
        async for _ in hints:
            self.notify()

    @staticmethod
    async def wait(ticket: asyncio.Event, seconds: float) -> None:
        """Returns when work was queued since the ticket was taken, or after `seconds`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await ticket.wait()
