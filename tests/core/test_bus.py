"""Both buses deliver what is published to every subscriber of the channel, and only to them."""

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from magicpixels.core.bus import EventBus, LocalBus, RedisBus
from tests.support import REDIS_URL


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    instance: EventBus = LocalBus() if request.param == "local" else RedisBus(REDIS_URL)
    yield instance
    await instance.close()


async def test_every_subscriber_receives_in_order(bus: EventBus) -> None:
    channel = f"test.{secrets.token_hex(4)}"
    async with (
        bus.subscribe(channel) as first,
        bus.subscribe(channel) as second,
        bus.subscribe(f"{channel}.other") as other,
    ):
        for n in range(3):
            await bus.publish(channel, b"m%d" % n)
        for messages in (first, second):
            got = [await asyncio.wait_for(anext(messages), 5) for _ in range(3)]
            assert got == [b"m0", b"m1", b"m2"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(other), 0.2)


async def test_local_bus_drops_oldest_for_a_slow_subscriber() -> None:
    bus = LocalBus()
    async with bus.subscribe("c") as messages:
        for n in range(1001):
            await bus.publish("c", b"%d" % n)
        assert await anext(messages) == b"1"
