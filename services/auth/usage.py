"""When each key was last used, written in batches so that verifying a key never waits on a write.

A verification only notes the time in memory; every few seconds the notes are written in one
statement. `last_used_at` is therefore as fresh as the flush interval plus the gateway's cache.
"""

import asyncio
from datetime import datetime

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.services.auth import store

log = structlog.get_logger("magicpixels.auth")


class UsageMarks:
    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        self._engine = engine
        self._interval = interval
        self._pending: dict[str, datetime] = {}

    def note(self, key_id: str, at: datetime) -> None:
        self._pending[key_id] = max(at, self._pending.get(key_id, at))

    async def flush(self) -> None:
        """Writes what was noted since the last flush; on failure keeps it for the next one."""
        marks, self._pending = self._pending, {}
        if not marks:
            return
        try:
            await store.mark_used(self._engine, marks)
        except SQLAlchemyError:
            log.warning("last_used_not_written", keys=len(marks), exc_info=True)
            for key_id, at in marks.items():
                self.note(key_id, at)

    async def run(self) -> None:
        """Flushes every interval until cancelled (whoever cancels it flushes once more)."""
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
