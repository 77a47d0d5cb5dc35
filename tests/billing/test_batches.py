"""Batches of holds: billing's Batch calls, and the jobs service's client (core/holds.py) that
sends the Reserves, Captures and Releases made at once in one of them."""

import asyncio
from typing import Any

import grpc
import pytest
from opentelemetry import trace

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import tracing
from magicpixels.core.errors import Unavailable, failed_call, remote_error
from magicpixels.core.holds import MAX_BATCH, Holds
from magicpixels.services.billing import server
from tests.billing.conftest import ACCOUNT, balance, refused
from tests.billing.test_server import grant, reserve
from tests.support import recorded_spans

HELD = billing_pb2.HOLD_STATE_HELD
CAPTURED = billing_pb2.HOLD_STATE_CAPTURED
RELEASED = billing_pb2.HOLD_STATE_RELEASED


def reserving(reference: str, account_id: str = ACCOUNT, livemode: bool = True) -> Any:
    usage = billing_pb2.Usage(mode="text_to_image")
    return billing_pb2.ReserveRequest(
        account_id=account_id, reference=reference, usage=usage, livemode=livemode
    )


async def test_a_batch_of_reserves_answers_each_as_its_own_reserve_would(billing: Any) -> None:
    await grant(billing, 2)
    await reserve(billing, "job_before")
    asked = [
        reserving("job_a"),
        reserving("job_before"),  # held before: answered with its hold
        reserving("job_b"),  # the last credit... then none for job_c
        reserving("job_c"),
        reserving("job_free", livemode=False),
        reserving("job_d", account_id=""),
    ]

    results = (await billing.BatchReserve(billing_pb2.BatchReserveRequest(requests=asked))).results

    assert [r.WhichOneof("result") for r in results] == [
        "hold",
        "hold",
        "error",
        "error",
        "hold",
        "error",
    ]
    assert [(r.hold.reference, r.hold.state, r.hold.amount) for r in results[:2]] == [
        ("job_a", HELD, 1),
        ("job_before", HELD, 1),
    ]
    assert (results[4].hold.amount, results[4].hold.livemode) == (0, False)
    # Each refusal is the one its own call would get (the same code, message and reason).
    assert remote_error(failed_call(results[3].error)) == await refused(reserve(billing, "job_e"))
    assert remote_error(failed_call(results[5].error)) == await refused(
        reserve(billing, "job_d", account_id="")
    )
    assert remote_error(failed_call(results[2].error)).reason == "INSUFFICIENT_CREDITS"
    assert await balance(billing) == (0, 2)


async def test_batches_of_captures_and_releases_resolve_each_hold_once(billing: Any) -> None:
    await grant(billing, 3)
    for reference in ("job_a", "job_b", "job_c"):
        await reserve(billing, reference)
    capture = billing_pb2.CaptureRequest

    captured = await billing.BatchCapture(
        billing_pb2.BatchCaptureRequest(
            requests=[
                capture(reference="job_a"),
                capture(reference="job_a"),
                capture(reference="x"),
            ]
        )
    )
    released = await billing.BatchRelease(
        billing_pb2.BatchReleaseRequest(
            requests=[
                billing_pb2.ReleaseRequest(reference="job_b"),
                billing_pb2.ReleaseRequest(reference="job_a"),
            ]
        )
    )

    assert [r.hold.state for r in captured.results[:2]] == [CAPTURED, CAPTURED]
    assert remote_error(failed_call(captured.results[2].error)).reason == "HOLD_NOT_FOUND"
    assert released.results[0].hold.state == RELEASED
    assert remote_error(failed_call(released.results[1].error)).reason == "HOLD_ALREADY_RESOLVED"
    assert await balance(billing) == (1, 1)  # job_b's credit back, job_c's still held


async def test_a_batch_over_the_limit_is_refused_whole(billing: Any) -> None:
    await grant(billing, 5)
    asked = [reserving(f"job_{n}") for n in range(MAX_BATCH + 1)]

    error = await refused(billing.BatchReserve(billing_pb2.BatchReserveRequest(requests=asked)))

    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAMETER_INVALID",
        {"param": "requests"},
    )
    assert await balance(billing) == (5, 0)


class CountedStub:
    """Billing's stub, counting the calls made of each method."""

    def __init__(self, stub: billing_pb2_grpc.BillingServiceStub) -> None:
        self._stub = stub
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> Any:
        self.calls.append(method)
        return getattr(self._stub, method)


@pytest.fixture
def counted(billing: Any) -> CountedStub:
    return CountedStub(billing)  # the books checked after every call


@pytest.fixture
def holds(counted: CountedStub) -> Holds:
    return Holds(lambda: counted, seconds=10)  # type: ignore[arg-type, return-value]


async def test_200_reserves_at_once_against_50_credits_go_in_few_calls_and_hold_50(
    billing: Any, counted: CountedStub, holds: Holds
) -> None:
    await grant(billing, 50)

    outcomes = await asyncio.gather(
        *(holds.reserve(reserving(f"job_{n}")) for n in range(200)), return_exceptions=True
    )

    held = [o for o in outcomes if isinstance(o, billing_pb2.Hold)]
    refusals = {remote_error(o).reason for o in outcomes if isinstance(o, grpc.aio.AioRpcError)}
    assert (len(held), refusals) == (50, {"INSUFFICIENT_CREDITS"})
    assert await balance(billing) == (0, 50)
    assert "BatchReserve" in counted.calls
    assert len(counted.calls) < 20


async def test_a_call_alone_goes_as_its_own_call(
    billing: Any, counted: CountedStub, holds: Holds
) -> None:
    await grant(billing, 1)

    hold = await holds.reserve(reserving("job_alone"))
    captured = await holds.capture(billing_pb2.CaptureRequest(reference="job_alone"))

    assert (hold.state, captured.state) == (HELD, CAPTURED)
    assert counted.calls == ["Reserve", "Capture"]


async def test_a_refusal_in_a_batch_reaches_its_caller_as_its_own_call_would(
    billing: Any, holds: Holds
) -> None:
    await grant(billing, 1)
    await reserve(billing, "job_done")
    await billing.Release(billing_pb2.ReleaseRequest(reference="job_done"))
    alone = await refused(billing.Capture(billing_pb2.CaptureRequest(reference="job_done")))

    batched = await asyncio.gather(
        holds.capture(billing_pb2.CaptureRequest(reference="job_done")),
        holds.release(billing_pb2.ReleaseRequest(reference="job_done")),
        holds.capture(billing_pb2.CaptureRequest(reference="job_done")),
        return_exceptions=True,
    )

    assert isinstance(batched[0], grpc.aio.AioRpcError)
    assert isinstance(batched[1], billing_pb2.Hold)  # released before: answered as it is
    assert remote_error(batched[0]) == remote_error(batched[2]) == alone  # type: ignore[arg-type]


async def test_captures_and_releases_at_once_settle_every_hold_once(
    billing: Any, counted: CountedStub, holds: Holds
) -> None:
    await grant(billing, 20)
    await asyncio.gather(*(holds.reserve(reserving(f"job_{n}")) for n in range(20)))

    settled = await asyncio.gather(
        *(holds.capture(billing_pb2.CaptureRequest(reference=f"job_{n}")) for n in range(10)),
        *(holds.release(billing_pb2.ReleaseRequest(reference=f"job_{n}")) for n in range(10, 20)),
    )

    assert [hold.state for hold in settled] == [CAPTURED] * 10 + [RELEASED] * 10
    assert await balance(billing) == (10, 0)
    assert {"BatchCapture", "BatchRelease"} <= set(counted.calls)


class SilentBilling:
    """A billing that never answers: its calls wait until they are given up."""

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any, **options: Any) -> Any:
            await asyncio.Event().wait()

        return call


async def test_a_caller_gives_up_at_its_deadline_as_its_own_call_would() -> None:
    holds = Holds(lambda: SilentBilling(), seconds=0.05)  # type: ignore[arg-type, return-value]

    outcomes = await asyncio.gather(
        *(holds.reserve(reserving(f"job_{n}")) for n in range(3)), return_exceptions=True
    )

    assert [o.code() for o in outcomes] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3  # type: ignore[union-attr]


async def test_a_request_failing_unexpectedly_fails_alone() -> None:
    def asking(request: Any) -> Any:
        if request.reference == "job_bad_request":
            raise RuntimeError("a bug")
        return request.reference, answer

    async def store_all(references: list[str]) -> list[Any]:
        return [RuntimeError("lost") if r == "job_bad_store" else r for r in references]

    def answer(stored: str) -> Any:
        if stored == "job_bad_answer":
            raise RuntimeError("another bug")
        return billing_pb2.Hold(reference=stored)

    references = ("job_a", "job_bad_request", "job_b", "job_bad_store", "job_bad_answer")
    asked = [billing_pb2.CaptureRequest(reference=r) for r in references]
    batch = billing_pb2.BatchCaptureRequest(requests=asked)

    results = await server._each(batch, asking, store_all)

    assert [r.hold.reference for r in results] == ["job_a", "", "job_b", "", ""]
    for failed in (results[1], results[3], results[4]):
        error = remote_error(failed_call(failed.error))
        assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")


async def test_a_caller_cancelled_while_its_batch_runs_leaves_the_others_answered(
    billing: Any, holds: Holds
) -> None:
    await grant(billing, 3)
    calls = [asyncio.ensure_future(holds.reserve(reserving(f"job_{n}"))) for n in range(3)]
    await asyncio.sleep(0.001)  # the batch is on its way

    calls[1].cancel()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert [o.reference for o in (outcomes[0], outcomes[2])] == ["job_0", "job_2"]  # type: ignore[union-attr]


async def test_a_billing_the_mesh_cannot_reach_fails_each_caller_as_their_calls_would() -> None:
    def unreachable() -> Any:
        raise Unavailable("SERVICE_UNAVAILABLE", "billing's address is not known yet")

    holds = Holds(unreachable, seconds=1)

    outcomes = await asyncio.gather(
        *(holds.reserve(reserving(f"job_{n}")) for n in range(3)), return_exceptions=True
    )

    assert [type(o) for o in outcomes] == [Unavailable] * 3


class BillingBeforeBatches(CountedStub):
    """A billing older than the Batch methods, as during a rollout."""

    def __getattr__(self, method: str) -> Any:
        if not method.startswith("Batch"):
            return super().__getattr__(method)
        self.calls.append(method)

        async def unimplemented(request: Any, **options: Any) -> Any:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNIMPLEMENTED, details="Method not found!")

        return unimplemented


async def test_a_billing_without_batch_methods_gets_the_calls_one_by_one(billing: Any) -> None:
    await grant(billing, 6)
    older = BillingBeforeBatches(billing)
    holds = Holds(lambda: older, seconds=10)  # type: ignore[arg-type, return-value]

    first = await asyncio.gather(*(holds.reserve(reserving(f"job_{n}")) for n in range(3)))
    then = await asyncio.gather(*(holds.reserve(reserving(f"job_{n}")) for n in range(3, 6)))

    assert [hold.state for hold in first + then] == [HELD] * 6
    assert older.calls == ["BatchReserve"] + ["Reserve"] * 6  # not asked again for a while
    assert await balance(billing) == (0, 6)


async def test_a_batch_call_is_in_its_first_callers_trace_linked_to_the_others(
    billing: Any, holds: Holds
) -> None:
    await grant(billing, 2)

    async def reserve_in_a_span(reference: str) -> trace.SpanContext:
        with tracing.span("caller") as span:
            await holds.reserve(reserving(reference))
            return span.get_span_context()  # type: ignore[no-any-return]

    with recorded_spans() as exporter:
        first, second = await asyncio.gather(reserve_in_a_span("job_a"), reserve_in_a_span("job_b"))

    (batch,) = [s for s in exporter.get_finished_spans() if s.name == "billing.batch_reserve"]
    assert batch.parent is not None
    assert batch.parent.span_id == first.span_id
    assert [link.context for link in batch.links] == [second]
    assert batch.attributes == {"magicpixels.batch_size": 2}


async def test_a_batch_call_is_in_a_recorded_trace_when_its_first_caller_is_not_sampled(
    billing: Any, holds: Holds
) -> None:
    await grant(billing, 2)
    unsampled = trace.SpanContext(
        trace_id=1, span_id=1, is_remote=False, trace_flags=trace.TraceFlags(0)
    )

    async def reserve_unsampled() -> None:
        with trace.use_span(trace.NonRecordingSpan(unsampled)):
            await holds.reserve(reserving("job_a"))

    async def reserve_in_a_span() -> trace.SpanContext:
        with tracing.span("caller") as span:
            await holds.reserve(reserving("job_b"))
            return span.get_span_context()  # type: ignore[no-any-return]

    with recorded_spans() as exporter:
        _, recorded = await asyncio.gather(reserve_unsampled(), reserve_in_a_span())

    (batch,) = [s for s in exporter.get_finished_spans() if s.name == "billing.batch_reserve"]
    assert batch.parent is not None
    assert batch.parent.span_id == recorded.span_id
    assert list(batch.links) == []
