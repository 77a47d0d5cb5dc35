"""The event loop every serving process of the mesh runs on: uvloop (libuv), as uvicorn picks.

grpc.aio works on any asyncio loop. On uvloop a call between two services costs about a tenth
less CPU than on asyncio's own loop, and the gateway's HTTP less still (bench/jobs.py serves
the bare Starlette baseline on uvloop too, for a like-for-like ratio).
"""

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` to completion on a new uvloop loop, as `asyncio.run` would on its own."""
    return uvloop.run(main)


async def stopped(task: "asyncio.Task[Any] | None") -> None:
    """Cancels a background task and waits until it has ended; nothing for None."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
