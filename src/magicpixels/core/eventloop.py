"""The event loop every serving process of the mesh runs on: uvloop (libuv), as uvicorn picks.

grpc.aio works on any asyncio loop. On uvloop a call between two services costs about a tenth
less CPU than on asyncio's own loop, and the gateway's HTTP less still (bench/jobs.py serves
the bare Starlette baseline on uvloop too, for a like-for-like ratio).
"""

import asyncio
import contextlib
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` to completion on a new uvloop loop, as `asyncio.run` would on its own."""
    return uvloop.run(main)


async def unless(
    work: Awaitable[T], *interruptions: Awaitable[object], seconds: float | None = None
) -> T | None:
    """What `work` returns, or None when an interruption ends first or `seconds` pass.

    However it ends (its caller cancelled too), nothing it started is left running: the
    interruptions and unfinished work are cancelled and awaited, and an error of work is raised.
    """
    task = asyncio.ensure_future(work)
    others = [asyncio.ensure_future(interruption) for interruption in interruptions]
    try:
        await asyncio.wait((task, *others), timeout=seconds, return_when=FIRST_COMPLETED)
    finally:
        for other in others:
            await stopped(other)
        if not task.done():
            await stopped(task)
    return None if task.cancelled() else task.result()


async def all_of(works: Iterable[Awaitable[T]]) -> list[T]:
    """What each of `works` returns, in order, or the first error of them: the others are then
    cancelled, where gather would leave them running."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(work)) for work in works]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _awaited(work: Awaitable[T]) -> T:
    return await work


async def stopped(task: "asyncio.Future[Any] | None") -> None:
    """Cancels a background task and waits until it has ended; nothing for None."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
