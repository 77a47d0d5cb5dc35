"""Group commit: calls that arrive together run together, each caller getting its own answer.

A Reserve or a Capture alone costs a commit (a WAL flush on PostgreSQL) and the CPU of a
statement on both sides; sent from another service, it also costs a gRPC call on both sides of
the wire. Calls made in the same turn of the event loop, or while the batch before them was
running, go as one batch, in the order they came: the cost of a statement, of a commit or of a
call is shared by all of them (as TigerBeetle's clients batch the transfers of their callers).
"""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")

# What a batch answers each of its items: its answer, or the error to raise to its caller.
Outcome = Answer | BaseException
Run = Callable[[Sequence[Item]], Awaitable[Sequence[Outcome[Answer]]]]


class _Waiting(NamedTuple, Generic[Item, Answer]):
    item: Item
    answer: "asyncio.Future[Answer]"
    # The submitter's context (request id, deadline, trace): its batch runs in the first one's.
    context: contextvars.Context


class Batcher(Generic[Item, Answer]):
    """Runs the items submitted with `run`, in batches, at most `at_once` batches at a time:
    under load, the calls that come while the batches run make the next one, rather than
    batches of one. (More than one at a time: a batch stuck on a slow peer holds up only the
    calls in it.)"""

    def __init__(
        self, run: Run[Item, Answer], *, most: int | None = None, at_once: int = 1
    ) -> None:
        self._run = run
        self._most = most  # the most items a batch takes; the rest wait for the next
        self._at_once = at_once
        self._running: set[asyncio.Task[None]] = set()
        self._waiting: list[_Waiting[Item, Answer]] = []
        self._flush_due = False

    async def submit(self, item: Item) -> Answer:
        """The item's answer, once the batch it joins has run."""
        (answer,) = self._enqueue([item])
        return await answer

    async def submit_all(self, items: Sequence[Item]) -> list[Outcome[Answer]]:
        """Each item's answer or error, in order, once the batches they join have run: what
        `submit` gives each, without a task for each (a caller with many items at once)."""
        return await asyncio.gather(*self._enqueue(items), return_exceptions=True)

    def _enqueue(self, items: Sequence[Item]) -> list["asyncio.Future[Answer]"]:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        answers: list[asyncio.Future[Answer]] = [loop.create_future() for _ in items]
        self._waiting.extend(map(_Waiting, items, answers, [context] * len(items)))
        if not self._flush_due:  # once the loop has run what is ready now, more may have come
            self._flush_due = True
            loop.call_soon(self._flush)
        return answers

    def _flush(self) -> None:
        self._flush_due = False
        # A call cancelled before its batch began (its caller gave up) is not made.
        self._waiting = [one for one in self._waiting if not one.answer.done()]
        # Otherwise a batch running flushes as it ends.
        while self._waiting and len(self._running) < self._at_once:
            cut = len(self._waiting) if self._most is None else self._most
            batch, self._waiting = self._waiting[:cut], self._waiting[cut:]
            # A copy: the items of one `submit_all` share a context, and may make two batches.
            context = batch[0].context.copy()
            task = asyncio.create_task(self._run_batch(batch), context=context)
            self._running.add(task)

    async def _run_batch(self, batch: list[_Waiting[Item, Answer]]) -> None:
        try:
            outcomes = await self._run([one.item for one in batch])
            for one, outcome in zip(batch, outcomes, strict=True):
                _settle(one.answer, outcome)
        except BaseException as error:  # the batch failed as a whole: so did each of its calls
            for one in batch:
                _settle(one.answer, error)
            if not isinstance(error, Exception):
                raise
        finally:
            self._running.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._flush()


def _settle(answer: "asyncio.Future[Answer]", outcome: Outcome[Answer]) -> None:
    if answer.done():  # its caller was cancelled; the batch ran all the same
        return
    if isinstance(outcome, asyncio.CancelledError):
        answer.cancel()
    elif isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
