"""Billing's two-phase holds as a caller makes them: concurrent calls go in one batch call.

The jobs service under load makes many Reserves at once (one per create it serves) and many
Captures (one per job that ends). Each alone is a gRPC call, whose cost on both sides of the
wire is most of what a hold costs (../shared/bench/README.md: about 6,400 calls a second on a
core, before any work). Calls made while one of the same method is on its way go together in
one BatchReserve, BatchCapture or BatchRelease; a call alone goes as itself, so an idle mesh
answers and traces exactly as it would without batching. Each caller gets its own hold, or the
error its own call would have raised (an `AioRpcError` with billing's status and reason).
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import grpc

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.batching import Batcher, Outcome
from magicpixels.core.context import set_deadline, within_deadline
from magicpixels.core.errors import failed_call

# Billing's bound on a batch (services/billing/server.py MAX_BATCH).
MOST_PER_CALL = 1000

Request = TypeVar("Request")
Stub = billing_pb2_grpc.BillingServiceStub


class _Asked(NamedTuple, Generic[Request]):
    request: Request
    deadline: float  # the loop's time by which its caller gives up


class _Method(Generic[Request]):
    """One method's calls: alone, as the method; together, as its batch method."""

    def __init__(
        self,
        single: Callable[[Stub], Any],
        batch: Callable[[Stub], Any],
        envelope: Callable[[list[Request]], Any],
        stub: Callable[[], Stub],
        seconds: float,
    ) -> None:
        self._single = single
        self._seconds = seconds
        self._batch = batch
        self._envelope = envelope
        self._stub = stub
        self._batcher: Batcher[_Asked[Request], billing_pb2.Hold] = Batcher(
            self._send, most=MOST_PER_CALL
        )

    async def __call__(self, request: Request) -> billing_pb2.Hold:
        seconds = within_deadline(self._seconds)
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            async with asyncio.timeout(seconds):
                return await self._batcher.submit(_Asked(request, deadline))
        except TimeoutError:  # its batch may or may not have been made: as a call timed out
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, details="Deadline Exceeded"
            ) from None

    async def _send(self, batch: Sequence[_Asked[Request]]) -> list[Outcome[billing_pb2.Hold]]:
        # The batch runs in its first caller's context; its call may take as long as the caller
        # that waits longest, each caller giving up at its own deadline (`__call__`).
        seconds = max(asked.deadline for asked in batch) - asyncio.get_running_loop().time()
        set_deadline(seconds)
        stub = self._stub()
        if len(batch) == 1:
            try:
                return [await self._single(stub)(batch[0].request, timeout=seconds)]
            except grpc.aio.AioRpcError as error:
                return [error]
        envelope = self._envelope([asked.request for asked in batch])
        response = await self._batch(stub)(envelope, timeout=seconds)
        return [_outcome(result) for result in response.results]


def _outcome(result: billing_pb2.HoldResult) -> Outcome[billing_pb2.Hold]:
    if result.HasField("error"):
        return failed_call(result.error)
    return result.hold


class Holds:
    """Reserve, Capture and Release on billing, batched with whatever is on its way."""

    def __init__(self, stub: Callable[[], Stub], *, seconds: float) -> None:
        """`stub`: billing's stub, asked for at each call (billing may start after its caller);
        `seconds`: the most a call may take, within the deadline of the RPC it serves if any."""
        self.reserve: _Method[billing_pb2.ReserveRequest] = _Method(
            lambda stub: stub.Reserve,
            lambda stub: stub.BatchReserve,
            lambda requests: billing_pb2.BatchReserveRequest(requests=requests),
            stub,
            seconds,
        )
        self.capture: _Method[billing_pb2.CaptureRequest] = _Method(
            lambda stub: stub.Capture,
            lambda stub: stub.BatchCapture,
            lambda requests: billing_pb2.BatchCaptureRequest(requests=requests),
            stub,
            seconds,
        )
        self.release: _Method[billing_pb2.ReleaseRequest] = _Method(
            lambda stub: stub.Release,
            lambda stub: stub.BatchRelease,
            lambda requests: billing_pb2.BatchReleaseRequest(requests=requests),
            stub,
            seconds,
        )
