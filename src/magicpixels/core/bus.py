"""A publish/subscribe bus: in-process in embedded mode, Redis pub/sub across processes.

Messages are hints (a job changed, a job was queued); a subscriber that misses one reads the
truth from the database, so the bus never needs to be durable.
"""

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import redis.asyncio as redis

# A subscriber that falls this far behind loses the oldest hints, not the process's memory.
_QUEUE_LIMIT = 1000


class EventBus(Protocol):
    # Whether other processes hear what is published here, or only this process does.
    crosses_processes: bool

    async def publish(self, channel: str, message: bytes) -> None: ...

    def subscribe(self, channel: str) -> "AsyncIterator[AsyncIterator[bytes]]": ...

    async def close(self) -> None: ...


class LocalBus:
    crosses_processes = False

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in self._subscribers.get(channel, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(_QUEUE_LIMIT)
        self._subscribers[channel].add(queue)
        try:
            yield _drain(queue)
        finally:
            self._subscribers[channel].discard(queue)
            if not self._subscribers[channel]:
                del self._subscribers[channel]

    async def close(self) -> None:
        self._subscribers.clear()


async def _drain(queue: asyncio.Queue[bytes]) -> AsyncIterator[bytes]:
    while True:
        yield await queue.get()


class RedisBus:
    crosses_processes = True

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url)

    async def publish(self, channel: str, message: bytes) -> None:
        await self._redis.publish(channel, message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        try:
            yield _messages(pubsub)
        finally:
            await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()


async def _messages(pubsub: redis.client.PubSub) -> AsyncIterator[bytes]:
    async for message in pubsub.listen():
        if message["type"] == "message":
            yield message["data"]


def open_bus(redis_url: str | None) -> EventBus:
    return RedisBus(redis_url) if redis_url else LocalBus()
