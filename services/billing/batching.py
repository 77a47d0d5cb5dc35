"""Group commit: calls that arrive together run together, each caller getting its own answer.

A Reserve or a Capture alone costs a commit (a WAL flush on PostgreSQL) and the CPU of a
statement on both sides. Calls made in the same turn of the event loop, or while the batch
before them was running, go to the database as one batch, in the order they came: the cost of
a statement and of a commit is shared by all of them (as TigerBeetle batches its transfers).
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")

# What a batch answers each of its items: its answer, or the error to raise to its caller.
Outcome = Answer | BaseException
Run = Callable[[Sequence[Item]], Awaitable[Sequence[Outcome[Answer]]]]


class Batcher(Generic[Item, Answer]):
    """Runs the items submitted with `run`, in batches, one batch at a time: under load, the
    calls that come while a batch runs make the next one, rather than batches of one."""

    def __init__(self, run: Run[Item, Answer]) -> None:
        self._run = run
        self._running: asyncio.Task[None] | None = None
        self._waiting: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._flush_due = False

    async def submit(self, item: Item) -> Answer:
        """The item's answer, once the batch it joins has run."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self._waiting.append((item, answer))
        if not self._flush_due:  # once the loop has run what is ready now, more may have come
            self._flush_due = True
            loop.call_soon(self._flush)
        return await answer

    def _flush(self) -> None:
        self._flush_due = False
        if self._running is not None:  # the batch running flushes as it ends
            return
        # A call cancelled before its batch began (its caller gave up) is not made.
        batch = [(item, answer) for item, answer in self._waiting if not answer.done()]
        self._waiting = []
        if batch:
            self._running = asyncio.create_task(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[Answer]]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in batch])
            for (_, answer), outcome in zip(batch, outcomes, strict=True):
                _settle(answer, outcome)
        except BaseException as error:  # the batch failed as a whole: so did each of its calls
            for _, answer in batch:
                _settle(answer, error)
            if not isinstance(error, Exception):
                raise
        finally:
            self._running = None
            self._flush()


def _settle(answer: asyncio.Future[Answer], outcome: Outcome[Answer]) -> None:
    if answer.done():  # its caller was cancelled; the batch ran all the same
        return
    if isinstance(outcome, asyncio.CancelledError):
        answer.cancel()
    elif isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
