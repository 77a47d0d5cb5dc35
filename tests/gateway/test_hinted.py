"""Following announcements while Redis is away: the cache keeps nothing, the log says so once
with its cause, then a line a minute, not a traceback a second."""

import asyncio
import itertools
import socket

import pytest
import structlog.testing

from magicpixels.core import eventloop
from magicpixels.core.bus import RedisBus
from magicpixels.gateway import hinted
from magicpixels.gateway.hinted import HintedCache


async def test_a_redis_away_is_reported_once_with_its_cause_then_a_line_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each failed subscription here takes a second of the clock the reports are timed by."""
    seconds = itertools.count()
    monkeypatch.setattr(hinted, "_clock", lambda: float(next(seconds)))
    monkeypatch.setattr(hinted, "_RESUBSCRIBE_SECONDS", 0.0)
    with socket.socket() as closed:  # bound, not listening: each connection is refused
        closed.bind(("127.0.0.1", 0))
        bus = RedisBus(f"redis://127.0.0.1:{closed.getsockname()[1]}/0")
        cache: HintedCache[str] = HintedCache(60.0)
        with structlog.testing.capture_logs() as logged:
            following = asyncio.create_task(hinted.follow(bus, "hints", cache, lambda _: None))
            while len([e for e in logged if e["event"] == "announcements_not_followed"]) < 3:
                await asyncio.sleep(0.01)
            await eventloop.stopped(following)
        await bus.close()

    reports = [e for e in logged if e["event"] == "announcements_not_followed"]
    assert [report["failures"] for report in reports[:3]] == [1, 61, 121]
    assert reports[0]["exc_info"] is True
    assert not reports[1].get("exc_info")
