"""Billing's two-phase holds as a caller makes them: concurrent calls go in one batch call.

The jobs service under load makes many Reserves at once (one per create it serves) and many
Captures (one per job that ends). Each alone is a gRPC call, whose cost on both sides of the
wire is most of what a hold costs (../shared/bench/README.md: about 6,400 calls a second on a
core, before any work). The calls made while earlier ones are on their way go together in one
BatchReserve, BatchCapture or BatchRelease; a call alone goes as itself, so an idle mesh
answers and traces exactly as it would without batching. Each caller gets its own hold, or the
error its own call would have raised (an `AioRpcError` with billing's status and reason).
"""

import asyncio
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Generic, NamedTuple, TypeVar

import grpc
from opentelemetry.trace import SpanContext

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import tracing
from magicpixels.core.batching import Batcher, Outcome
from magicpixels.core.context import set_deadline, within_deadline
from magicpixels.core.errors import Internal, failed_call

# The most requests one Batch call may carry; billing refuses more.
MAX_BATCH = 1000
# Batches of one method on their way at once: one stuck on a slow billing replica holds up
# only the calls in it.
_AT_ONCE = 4
# How long calls go one by one after a billing answered that it has no Batch methods (one
# older than them, while a rollout is under way).
_UNBATCHED_SECONDS = 60.0
_NO_RESULT = Internal("BATCH_RESULT_MISSING", "billing answered no result for this request")

Request = TypeVar("Request")
Stub = billing_pb2_grpc.BillingServiceStub


class _Asked(NamedTuple, Generic[Request]):
    request: Request
    deadline: float  # the loop's time by which its caller gives up
    span: SpanContext | None  # its caller's, while tracing is on


class _Method(Generic[Request]):
    """One method's calls: alone, as the method (`Reserve`); together, as its batch method
    (`BatchReserve`, whose request is `envelope`)."""

    def __init__(self, name: str, envelope: Any, stub: Callable[[], Stub], seconds: float) -> None:
        self._span_name = f"billing.batch_{name.lower()}"
        self._single = attrgetter(name)
        self._batch = attrgetter(f"Batch{name}")
        self._envelope = envelope
        self._stub = stub
        self._seconds = seconds
        self._unbatched_until = 0.0
        self._batcher: Batcher[_Asked[Request], billing_pb2.Hold] = Batcher(
            self._send, most=MAX_BATCH, at_once=_AT_ONCE
        )

    async def __call__(self, request: Request) -> billing_pb2.Hold:
        seconds = within_deadline(self._seconds)
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            async with asyncio.timeout(seconds):
                asked = _Asked(request, deadline, tracing.current_span_context())
                return await self._batcher.submit(asked)
        except TimeoutError:  # its batch may or may not have been made: as a call timed out
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, details="Deadline Exceeded"
            ) from None

    async def _send(self, batch: Sequence[_Asked[Request]]) -> list[Outcome[billing_pb2.Hold]]:
        # The batch runs in its first caller's context; its call may take as long as the caller
        # that waits longest, each caller giving up at its own deadline (`__call__`).
        now = asyncio.get_running_loop().time()
        seconds = max(asked.deadline for asked in batch) - now
        set_deadline(seconds)
        stub = self._stub()
        if len(batch) == 1:
            return [await self._single(stub)(batch[0].request, timeout=seconds)]
        if now >= self._unbatched_until:
            try:
                return await self._in_one_call(stub, batch, seconds)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                # Nothing was done: the calls go one by one, for a while.
                self._unbatched_until = now + _UNBATCHED_SECONDS
        calls = (self._single(stub)(asked.request, timeout=seconds) for asked in batch)
        return await asyncio.gather(*calls, return_exceptions=True)

    async def _in_one_call(
        self, stub: Stub, batch: Sequence[_Asked[Request]], seconds: float
    ) -> list[Outcome[billing_pb2.Hold]]:
        envelope = self._envelope(requests=[asked.request for asked in batch])
        # The call is in the trace of the first caller whose trace is recorded (sampled); the
        # other recorded ones are linked to it.
        recorded = [asked.span for asked in batch if asked.span and asked.span.trace_flags.sampled]
        parent, others = (recorded[0], recorded[1:]) if recorded else (None, [])
        attributes = {"magicpixels.batch_size": len(batch)}
        with tracing.span(self._span_name, attributes, parent=parent, links=others):
            results = list((await self._batch(stub)(envelope, timeout=seconds)).results)
        if len(results) != len(batch):  # which result is whose is unknown: so is each outcome
            results = [billing_pb2.HoldResult()] * len(batch)
        return [_outcome(result) for result in results]


def _outcome(result: billing_pb2.HoldResult) -> Outcome[billing_pb2.Hold]:
    kind = result.WhichOneof("result")
    if kind == "hold":
        return result.hold
    return failed_call(result.error if kind == "error" else _NO_RESULT.to_proto())


class Holds:
    """Reserve, Capture and Release on billing, batched with whatever is on its way."""

    def __init__(self, stub: Callable[[], Stub], *, seconds: float) -> None:
        """`stub`: billing's stub, asked for at each call (billing may start after its caller);
        `seconds`: the most a call may take, within the deadline of the RPC it serves if any."""
        self.reserve: _Method[billing_pb2.ReserveRequest] = _Method(
            "Reserve", billing_pb2.BatchReserveRequest, stub, seconds
        )
        self.capture: _Method[billing_pb2.CaptureRequest] = _Method(
            "Capture", billing_pb2.BatchCaptureRequest, stub, seconds
        )
        self.release: _Method[billing_pb2.ReleaseRequest] = _Method(
            "Release", billing_pb2.BatchReleaseRequest, stub, seconds
        )
