"""Hints on the event bus: a job changed (for its watchers), a job was queued (for idle workers
and, with a deadline, for the deadline timers), a job's move enqueued a webhook delivery (for
the webhook dispatchers), the jobs ahead in a queue changed (for the watchers of queued jobs).

Hints are lossy by design: the database holds the truth, a watcher reads the job again on
every hint, and a waiting worker looks for work again when its wait ends.
"""

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import structlog
from redis.exceptions import RedisError

from magicpixels.core import eventloop, metrics
from magicpixels.core.bus import EventBus
from magicpixels.core.timestamps import as_utc
from magicpixels.services.jobs.domain import TERMINAL, State
from magicpixels.services.jobs.store import JobRow, webhook_event_of

QUEUED_CHANNEL = "jobs.queued"
WEBHOOKS_CHANNEL = "jobs.webhooks"
# The deadline of a job just queued, ISO 8601.
DEADLINES_CHANNEL = "jobs.deadlines"
# The mode of a queue whose jobs ahead of others changed.
QUEUE_MOVED_CHANNEL = "jobs.queue_moved"
# Every change a client may read, for what gateways keep of jobs in memory: the job's id, then
# " queue" when the change also moved the jobs behind it in its queue (their positions changed).
VIEWS_CHANNEL = "jobs.views"

log = structlog.get_logger("magicpixels.jobs")


def changed_channel(job_id: str) -> str:
    return f"jobs.changed.{job_id}"


async def announce(bus: EventBus, *jobs: JobRow) -> None:
    """Tells watchers and gateways that these jobs moved, idle workers about the queued ones,
    the deadline timers about their deadlines, the watchers of the jobs behind about moves in
    and out of the queue, and webhook dispatchers about the deliveries the moves enqueued."""
    for job in jobs:
        if job.state in TERMINAL:  # every move is announced once, by the caller that won it
            metrics.JOBS_ENDED.labels("jobs", job.mode, job.state).inc()
        if job.state == State.QUEUED:  # first: a waiting worker is what the job waits on
            await _publish(bus, QUEUED_CHANNEL, job.mode)
        await _publish(bus, changed_channel(job.id), job.state)
        moved_queue = _moves_others_in_queue(job)
        await _publish(bus, VIEWS_CHANNEL, f"{job.id} queue" if moved_queue else job.id)
        if job.state == State.QUEUED and job.deadline_at is not None:
            await _publish(bus, DEADLINES_CHANNEL, as_utc(job.deadline_at).isoformat())
        if moved_queue:
            await _publish(bus, QUEUE_MOVED_CHANNEL, job.mode)
        if webhook_event_of(job):
            await _publish(bus, WEBHOOKS_CHANNEL, job.id)


def _moves_others_in_queue(job: JobRow) -> bool:
    """Whether the move changed how many jobs are ahead of others: the job left the queue
    (leased or canceled; a cancel of a running job is told too, harmlessly), or came back to
    its place in it (a retry). A new job joins at the back, ahead of none."""
    if job.state == State.QUEUED:
        return job.attempts > 0
    return job.state in (State.RUNNING, State.CANCELED)


async def announce_progress(bus: EventBus, job: JobRow) -> None:
    """Tells the job's watchers of its progress: a change that moves it nowhere, so it made no
    webhook event."""
    await _publish(bus, changed_channel(job.id), job.state)
    await _publish(bus, VIEWS_CHANNEL, job.id)


async def _publish(bus: EventBus, channel: str, message: str) -> None:
    try:
        await bus.publish(channel, message.encode())
    except RedisError:
        # The change is committed; failing the call now would only make its caller repeat it.
        log.warning("hint_not_published", channel=channel, exc_info=True)


class Hints:
    """Several streams of hints as one: which streams hinted since the last read.

    Hints that arrive while the reader is busy are merged, so a reader is never further behind
    than one read."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack
        self._hinted: set[str] = set()
        self._arrived = asyncio.Event()

    def follow(self, name: str, hints: AsyncIterator[object]) -> None:
        """Follows the stream under this name until the stack closes."""
        forwarding = asyncio.create_task(self._forward(name, hints))
        self._stack.push_async_callback(eventloop.stopped, forwarding)

    async def _forward(self, name: str, hints: AsyncIterator[object]) -> None:
        async for _ in hints:
            self._hinted.add(name)
            self._arrived.set()

    async def next(self) -> set[str]:
        await self._arrived.wait()
        self._arrived.clear()
        hinted, self._hinted = self._hinted, set()
        return hinted


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


class QueueMoves:
    """Wakes the watchers of queued jobs in this process when the jobs ahead in their mode's
    queue changed, in this process or any other: one bus subscription for the process, not
    one per watcher."""

    def __init__(self) -> None:
        self._signals: dict[str, QueueSignal] = defaultdict(QueueSignal)

    async def follow(self, hints: AsyncIterator[bytes]) -> None:
        async for mode in hints:
            self._signals[mode.decode()].notify()

    def of(self, mode: str) -> AsyncIterator[None]:
        """Each move of the mode's queue from now on."""
        signal = self._signals[mode]
        return _each_notify(signal, signal.ticket())


async def _each_notify(signal: QueueSignal, ticket: asyncio.Event) -> AsyncIterator[None]:
    while True:
        await ticket.wait()
        # Taken before the reader is told, so no notify after its next read goes unseen.
        ticket = signal.ticket()
        yield None
