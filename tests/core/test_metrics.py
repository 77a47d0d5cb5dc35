"""RED metrics of the shared interceptors: each RPC is counted once on each side, by its full
method and status code, as the service that served it and the one that called."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from magicpixels.core import metrics
from magicpixels.core.clients import open_channel
from magicpixels.core.server import RunningServer, ServiceBinding, start_server
from magicpixels.inference.v1 import inference_pb2, inference_pb2_grpc
from tests.core.test_server import TOKEN, ProbeServicer, call
from tests.support import PATIENCE_SECONDS

LIST_MODELS = "/magicpixels.inference.v1.InferenceService/ListModels"


@pytest.fixture
async def probe() -> AsyncIterator[RunningServer]:
    binding = ServiceBinding(
        "magicpixels.inference.v1.InferenceService",
        ProbeServicer(),
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
    )
    server = await start_server(
        [binding], host="127.0.0.1", port=0, service_token=TOKEN, service="probe"
    )
    yield server
    await server.stop(0)


def handled(side: str, service: str, code: str) -> float:
    labels = {"service": service, "grpc_method": LIST_MODELS, "grpc_code": code}
    return REGISTRY.get_sample_value(f"magicpixels_grpc_{side}_handled_total", labels) or 0.0


async def test_each_side_counts_each_call_by_its_code(probe: RunningServer) -> None:
    before = {
        (side, code): handled(side, service, code)
        for side, service in (("server", "probe"), ("client", "caller"))
        for code in ("OK", "NOT_FOUND")
    }
    counted_as = metrics.current_service.set("caller")
    try:
        await call(probe, "req_ok")
        await call(probe, "req_ok")
        with pytest.raises(grpc.aio.AioRpcError):
            await call(probe, "req_missing")
    finally:
        metrics.current_service.reset(counted_as)
    added: dict[Any, float] = {
        (side, code): handled(side, "probe" if side == "server" else "caller", code) - count
        for (side, code), count in before.items()
    }
    assert added == {
        ("server", "OK"): 2,
        ("server", "NOT_FOUND"): 1,
        ("client", "OK"): 2,
        ("client", "NOT_FOUND"): 1,
    }
    seconds = REGISTRY.get_sample_value(
        "magicpixels_grpc_server_handling_seconds_count",
        {"service": "probe", "grpc_method": LIST_MODELS},
    )
    assert seconds is not None
    assert seconds >= 3


def test_an_unusual_method_or_status_makes_no_series_of_its_own() -> None:
    assert metrics.http_method("BREW") == metrics.http_method("PROPFIND") == "OTHER"
    assert metrics.http_method("PATCH") == "PATCH"
    assert (metrics.status_class(418), metrics.status_class(None)) == ("4xx", "none")


class HangingServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Answers ListModels never; notes when the call is cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_a_call_its_caller_gives_up_on_is_cancelled_for_the_server_too() -> None:
    servicer = HangingServicer()
    binding = ServiceBinding(
        "magicpixels.inference.v1.InferenceService",
        servicer,
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
    )
    server = await start_server([binding], host="127.0.0.1", port=0, service_token=TOKEN)
    # The channel stays open and the deadline is far: only the cancel can end the call.
    channel = open_channel(server.address, service_token=TOKEN, timeout=10 * PATIENCE_SECONDS)
    try:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def list_models() -> Any:
            return await stub.ListModels(inference_pb2.ListModelsRequest())

        calling = asyncio.create_task(list_models())
        await servicer.started.wait()
        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        async with asyncio.timeout(PATIENCE_SECONDS):
            await servicer.cancelled.wait()
    finally:
        await channel.close()
        await server.stop(0)
