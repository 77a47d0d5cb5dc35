"""The group commit of concurrent calls (core/batching.py): who runs with whom, who is told what."""

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from magicpixels.core.batching import Batcher, Outcome


class Doubler:
    """Answers each item doubled, or the error it is; remembers its batches. A batch waits for
    `gate` when one is set, so that tests can submit while it runs."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []
        self.gate: asyncio.Event | None = None

    async def run(self, items: Sequence[object]) -> list[Outcome[object]]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        return [item if isinstance(item, Exception) else 2 * item for item in items]  # type: ignore[operator]


async def test_calls_made_in_one_turn_of_the_loop_run_as_one_batch_in_their_order() -> None:
    doubler = Doubler()
    batcher = Batcher(doubler.run)

    answers = await asyncio.gather(*(batcher.submit(n) for n in range(5)))

    assert answers == [0, 2, 4, 6, 8]
    assert doubler.batches == [[0, 1, 2, 3, 4]]


async def test_the_calls_made_while_a_batch_runs_make_the_next_batch() -> None:
    doubler = Doubler()
    doubler.gate = asyncio.Event()
    batcher = Batcher(doubler.run)
    first = asyncio.ensure_future(batcher.submit(1))
    while not doubler.batches:
        await asyncio.sleep(0)

    later = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0.01)
    batches_while_running = len(doubler.batches)
    doubler.gate.set()

    assert await asyncio.gather(first, *later) == [2, 4, 6]
    assert batches_while_running == 1
    assert doubler.batches == [[1], [2, 3]]


async def test_an_error_answered_to_one_call_is_raised_to_that_call_only() -> None:
    batcher = Batcher(Doubler().run)
    refused = ValueError("no")

    answers = await asyncio.gather(
        batcher.submit(1), batcher.submit(refused), batcher.submit(3), return_exceptions=True
    )

    assert answers == [2, refused, 6]


async def test_a_batch_that_fails_fails_each_of_its_calls_and_the_next_batch_runs() -> None:
    calls = 0

    async def fails_once(items: Sequence[int]) -> list[Outcome[int]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the database went away")
        return list(items)

    batcher = Batcher(fails_once)
    failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    assert [type(error) for error in failed] == [ConnectionError, ConnectionError]
    assert await batcher.submit(3) == 3


async def test_a_cancelled_call_leaves_the_others_of_its_batch_their_answers() -> None:
    doubler = Doubler()
    doubler.gate = asyncio.Event()
    batcher = Batcher(doubler.run)
    calls = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2, 3)]
    while not doubler.batches:
        await asyncio.sleep(0)

    calls[1].cancel()
    doubler.gate.set()

    assert await calls[0] == 2
    assert await calls[2] == 6
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    assert await batcher.submit(4) == 8


async def test_a_call_cancelled_before_its_batch_began_is_not_made() -> None:
    doubler = Doubler()
    batcher = Batcher(doubler.run)
    calls = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)  # each call has joined the waiting ones; no batch has begun

    calls[0].cancel()

    assert await asyncio.gather(*calls[1:]) == [4, 6]
    assert doubler.batches == [[2, 3]]


async def test_a_batch_takes_at_most_its_limit_and_the_rest_make_the_next() -> None:
    doubler = Doubler()
    batcher = Batcher(doubler.run, most=2)

    answers = await asyncio.gather(*(batcher.submit(n) for n in range(5)))

    assert answers == [0, 2, 4, 6, 8]
    assert doubler.batches == [[0, 1], [2, 3], [4]]


async def test_a_batch_runs_in_the_context_of_its_first_caller() -> None:
    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller")
    seen: list[tuple[str, list[int]]] = []

    async def run(items: Sequence[int]) -> list[Outcome[int]]:
        seen.append((caller.get(), list(items)))
        await asyncio.sleep(0)
        return list(items)

    async def submit_as(batcher: Batcher[int, int], name: str, item: int) -> int:
        caller.set(name)
        return await batcher.submit(item)

    one_each = Batcher(run, most=1)
    together = Batcher(run)
    await asyncio.gather(submit_as(one_each, "first", 1), submit_as(one_each, "second", 2))
    await asyncio.gather(submit_as(together, "third", 3), submit_as(together, "fourth", 4))

    assert seen == [("first", [1]), ("second", [2]), ("third", [3, 4])]


async def test_batches_run_at_once_up_to_their_limit_each_taking_what_waits() -> None:
    doubler = Doubler()
    doubler.gate = asyncio.Event()
    batcher = Batcher(doubler.run, at_once=2)

    first = asyncio.ensure_future(batcher.submit(0))
    while not doubler.batches:
        await asyncio.sleep(0)
    second = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2)]
    while len(doubler.batches) < 2:
        await asyncio.sleep(0)
    third = [asyncio.ensure_future(batcher.submit(n)) for n in (3, 4)]
    await asyncio.sleep(0.01)
    batches_while_running = list(doubler.batches)
    doubler.gate.set()

    assert await asyncio.gather(first, *second, *third) == [0, 2, 4, 6, 8]
    assert batches_while_running == [[0], [1, 2]]
    assert doubler.batches[2:] == [[3, 4]]


async def test_submit_all_answers_each_item_or_its_error_in_order_from_one_batch() -> None:
    doubler = Doubler()
    batcher = Batcher(doubler.run)
    refused = ValueError("refused")

    answers = await batcher.submit_all([1, refused, 3])

    assert answers == [2, refused, 6]
    assert doubler.batches == [[1, refused, 3]]


async def test_a_submit_all_cancelled_before_its_batch_leaves_its_items_unmade() -> None:
    doubler = Doubler()
    doubler.gate = asyncio.Event()
    batcher = Batcher(doubler.run)
    first = asyncio.ensure_future(batcher.submit(0))
    while not doubler.batches:
        await asyncio.sleep(0)
    given_up = asyncio.ensure_future(batcher.submit_all([1, 2]))
    await asyncio.sleep(0)

    given_up.cancel()
    doubler.gate.set()

    assert await first == 0
    with pytest.raises(asyncio.CancelledError):
        await given_up
    await asyncio.sleep(0.01)
    assert doubler.batches == [[0]]


async def test_the_batches_of_one_submit_all_do_not_share_their_context() -> None:
    marker: contextvars.ContextVar[int | None] = contextvars.ContextVar("marker", default=None)
    seen: list[int | None] = []

    async def run(items: Sequence[int]) -> list[Outcome[int]]:
        seen.append(marker.get())
        marker.set(items[0])
        await asyncio.sleep(0)
        return list(items)

    batcher = Batcher(run, most=1, at_once=2)

    assert await batcher.submit_all([1, 2]) == [1, 2]
    assert seen == [None, None]
