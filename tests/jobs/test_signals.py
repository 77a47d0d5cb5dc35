import asyncio
from types import SimpleNamespace

from magicpixels.core.bus import LocalBus
from magicpixels.services.jobs.signals import QUEUED_CHANNEL, QueueSignal, announce, changed_channel


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


async def test_announce_tells_watchers_and_wakes_workers_only_for_queued_jobs() -> None:
    bus = LocalBus()
    queued = SimpleNamespace(
        id="job_1", state="queued", mode="text_to_image", attempts=0, queued_at=None
    )
    running = SimpleNamespace(
        id="job_2", state="running", mode="image_to_video", attempts=1, queued_at=None
    )
    async with (
        bus.subscribe(QUEUED_CHANNEL) as wake_ups,
        bus.subscribe(changed_channel("job_1")) as first,
        bus.subscribe(changed_channel("job_2")) as second,
    ):
        await announce(bus, running, queued)  # type: ignore[arg-type]

        assert (await anext(first), await anext(second)) == (b"queued", b"running")
        # Announced first, the running job would have woken workers for its own mode.
        assert await anext(wake_ups) == b"text_to_image"
