"""Memory the bus keeps honest: what a gateway serves from memory for a short while, dropped as
soon as the service that owns it announces a change on the bus (Redis pub/sub across gateways,
in-process in embedded mode).

While the gateway is not subscribed (starting, or Redis unreachable) it keeps nothing, so a
missed announcement can never leave an entry stale past the moment it was missed. A value read
before an announcement is not kept either: the reader takes a `ticket` first.
"""

import asyncio
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog
from redis.exceptions import RedisError

from magicpixels.core.bus import EventBus

log = structlog.get_logger("magicpixels.gateway")

V = TypeVar("V")

# A bound on each cache, so a flood of distinct keys cannot grow memory without end.
_MAX_ENTRIES = 100_000
# How long to wait before subscribing again after the bus failed.
_RESUBSCRIBE_SECONDS = 1.0
_REPORT_EVERY_SECONDS = 60.0
_clock = time.monotonic


class HintedCache(Generic[V]):
    """Values by key for `ttl` seconds at most, while `following` the announcements that drop
    them."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.following = False
        self._entries: dict[str, tuple[float, V]] = {}
        self._drops = 0

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def ticket(self) -> int:
        """Taken before reading a value to `put`: no drop may come between them."""
        return self._drops

    def put(self, key: str, value: V, ticket: int, ttl: float | None = None) -> None:
        """Keeps the value for `ttl` (at most the cache's), unless a drop came after the ticket
        or the announcements are not followed."""
        if not self.following or ticket != self._drops:
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        seconds = self.ttl if ttl is None else min(ttl, self.ttl)
        self._entries[key] = (time.monotonic() + seconds, value)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)
        self._drops += 1

    def clear(self) -> None:
        self._entries.clear()
        self._drops += 1

    def stop_following(self) -> None:
        """Announcements may be missed from now on: forget everything, keep nothing."""
        self.following = False
        self.clear()


async def follow(
    bus: EventBus, channel: str, cache: HintedCache[V], on_hint: Callable[[bytes], None]
) -> None:
    """Hands each announcement on the channel to `on_hint` while the cache is kept, until
    cancelled; subscribes again after the bus failed."""
    failures, reported_at = 0, -math.inf
    while True:
        try:
            async with bus.subscribe(channel) as hints:
                cache.following = True
                if failures:
                    log.info("announcements_followed_again", channel=channel, failures=failures)
                    failures = 0
                async for hint in hints:
                    on_hint(hint)
        except (RedisError, OSError) as error:
            failures += 1
            # The first failure with its traceback, then a line a minute while Redis is away.
            now = _clock()
            if now - reported_at >= _REPORT_EVERY_SECONDS:
                reported_at = now
                log.warning(
                    "announcements_not_followed",
                    channel=channel,
                    failures=failures,
                    error=str(error),
                    exc_info=failures == 1,
                )
        finally:
            cache.stop_following()
        await asyncio.sleep(_RESUBSCRIBE_SECONDS)
