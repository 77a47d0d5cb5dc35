import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import SimpleNamespace

from magicpixels.core.bus import LocalBus
from magicpixels.services.jobs.signals import (
    DEADLINES_CHANNEL,
    QUEUE_MOVED_CHANNEL,
    QUEUED_CHANNEL,
    Hints,
    QueueMoves,
    QueueSignal,
    announce,
    changed_channel,
)


async def test_a_ticket_taken_before_a_notify_is_woken_by_it() -> None:
    signal = QueueSignal()
    ticket = signal.ticket()

    signal.notify()
    await signal.wait(ticket, seconds=30)

    assert ticket.is_set()
    assert not signal.ticket().is_set()


async def test_a_wait_without_a_notify_ends_at_its_timeout() -> None:
    signal = QueueSignal()
    ticket = signal.ticket()

    await signal.wait(ticket, seconds=0.05)

    assert not ticket.is_set()


async def test_every_waiter_is_woken_by_a_hint_on_the_bus() -> None:
    bus, signal = LocalBus(), QueueSignal()
    async with bus.subscribe(QUEUED_CHANNEL) as hints:
        follower = asyncio.create_task(signal.follow(hints))
        tickets = [signal.ticket() for _ in range(3)]
        waiters = asyncio.gather(*(signal.wait(ticket, seconds=30) for ticket in tickets))

        await bus.publish(QUEUED_CHANNEL, b"text_to_image")
        await waiters
        follower.cancel()

    assert all(ticket.is_set() for ticket in tickets)


def job(
    state: str,
    attempts: int,
    deadline_at: datetime | None = None,
    job_id: str = "",
    mode: str = "text_to_image",
) -> SimpleNamespace:
    """What announce reads of a job row."""
    return SimpleNamespace(
        id=job_id or f"job_{state}_{attempts}",
        state=state,
        mode=mode,
        attempts=attempts,
        queued_at=None,
        deadline_at=deadline_at,
    )


async def test_announce_tells_watchers_and_wakes_workers_only_for_queued_jobs() -> None:
    bus = LocalBus()
    queued = job("queued", 0, job_id="job_1")
    running = job("running", 1, job_id="job_2", mode="image_to_video")
    async with (
        bus.subscribe(QUEUED_CHANNEL) as wake_ups,
        bus.subscribe(changed_channel("job_1")) as first,
        bus.subscribe(changed_channel("job_2")) as second,
    ):
        await announce(bus, running, queued)  # type: ignore[arg-type]

        assert (await anext(first), await anext(second)) == (b"queued", b"running")
        # Announced first, the running job would have woken workers for its own mode.
        assert await anext(wake_ups) == b"text_to_image"


async def test_moves_in_and_out_of_the_queue_tell_its_watchers_and_deadlines_their_timers() -> None:
    bus = LocalBus()
    deadline = datetime(2026, 11, 26, 1, 2, 3, 456000, tzinfo=UTC)
    async with (
        bus.subscribe(QUEUE_MOVED_CHANNEL) as queue_moves,
        bus.subscribe(DEADLINES_CHANNEL) as deadlines,
    ):
        new = job("queued", 0, deadline)
        leased, retried, canceled = job("running", 1), job("queued", 1), job("canceled", 1)
        await announce(bus, new, leased, retried, canceled)  # type: ignore[arg-type]

        # The new job joined the back, moving nobody: only the three others are told.
        moved = [await anext(queue_moves) for _ in range(3)]
        assert moved == [b"text_to_image"] * 3
        assert datetime.fromisoformat((await anext(deadlines)).decode()) == deadline


async def test_hints_merge_the_streams_that_spoke_since_the_last_read() -> None:
    bus, moves = LocalBus(), QueueMoves()
    async with bus.subscribe(QUEUE_MOVED_CHANNEL) as moved, AsyncExitStack() as stack:
        following = asyncio.create_task(moves.follow(moved))
        hints = Hints(stack)
        hints.follow("job", await stack.enter_async_context(bus.subscribe("job_1")))
        hints.follow("queue", moves.of("text_to_image"))

        await bus.publish("job_1", b"running")
        await bus.publish(QUEUE_MOVED_CHANNEL, b"text_to_image")
        await bus.publish(QUEUE_MOVED_CHANNEL, b"text_to_audio")  # another queue
        await asyncio.sleep(0.01)
        first = await hints.next()
        await bus.publish(QUEUE_MOVED_CHANNEL, b"text_to_image")
        second = await hints.next()
        following.cancel()

    assert (first, second) == ({"job", "queue"}, {"queue"})
