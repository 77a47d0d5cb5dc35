"""The shared server bootstrap: errors become statuses with ErrorInfo, the service token is
required, request ids and deadlines reach the handler, health and reflection answer."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from magicpixels.core.clients import open_channel
from magicpixels.core.context import time_left
from magicpixels.core.errors import NotFound, remote_error
from magicpixels.core.server import RunningServer, ServiceBinding, start_server
from magicpixels.core.settings import MeshSettings
from magicpixels.inference.v1 import inference_pb2, inference_pb2_grpc
from magicpixels.mesh import start_mesh

TOKEN = "core-test-token"


class ProbeServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Answers ListModels according to the request id it was called with."""

    seen: dict[str, Any]

    def __init__(self) -> None:
        self.seen = {}

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        request_id = structlog.contextvars.get_contextvars()["request_id"]
        self.seen = {"request_id": request_id, "time_left": time_left()}
        if request_id == "req_missing":
            raise NotFound("MODEL_NOT_FOUND", "no such model")
        if request_id == "req_crash":
            raise RuntimeError("secret internals")
        return inference_pb2.ListModelsResponse()


@pytest.fixture
async def probe() -> AsyncIterator[tuple[RunningServer, ProbeServicer]]:
    servicer = ProbeServicer()
    binding = ServiceBinding(
        "magicpixels.inference.v1.InferenceService",
        servicer,
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
    )
    server = await start_server([binding], host="127.0.0.1", port=0, service_token=TOKEN)
    yield server, servicer
    await server.stop(0)


async def call(server: RunningServer, request_id: str, token: str = TOKEN) -> Any:
    async with open_channel(server.address, service_token=token, timeout=5) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return await stub.ListModels(
            inference_pb2.ListModelsRequest(), metadata=[("x-request-id", request_id)]
        )


async def test_domain_error_becomes_status_with_reason(probe: Any) -> None:
    server, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(server, "req_missing")
    error = remote_error(raised.value)
    assert (error.code, error.reason, error.message) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        "no such model",
    )


async def test_crash_is_internal_without_its_text(probe: Any) -> None:
    server, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(server, "req_crash")
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (raised.value.details() or "")
    assert remote_error(raised.value).reason == "INTERNAL"


async def test_request_id_and_deadline_reach_the_handler(probe: Any) -> None:
    server, servicer = probe
    await call(server, "req_fine")
    assert servicer.seen["request_id"] == "req_fine"
    assert 0 < servicer.seen["time_left"] <= 5.5  # the clocks of client and server differ a little


async def test_wrong_service_token_is_refused(probe: Any) -> None:
    server, servicer = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(server, "req_fine", token="guess")
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert servicer.seen == {}


async def test_health_answers_without_token_and_stops_serving_on_shutdown(probe: Any) -> None:
    server, _ = probe
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        name = "magicpixels.inference.v1.InferenceService"
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.health.enter_graceful_shutdown()
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def _binding() -> ServiceBinding:
    return ServiceBinding(
        "magicpixels.inference.v1.InferenceService",
        ProbeServicer(),
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
    )


async def test_a_port_in_use_is_refused_or_swapped_for_a_free_one_never_shared(
    probe: Any,
) -> None:
    """grpc shares a port held by another server (SO_REUSEPORT) unless told not to: two
    services would answer one address."""
    taken = probe[0].port
    with pytest.raises(RuntimeError):
        await start_server([_binding()], host="127.0.0.1", port=taken, service_token=TOKEN)
    moved = await start_server(
        [_binding()], host="127.0.0.1", port=taken, service_token=TOKEN, any_port_else=True
    )
    try:
        assert moved.port not in (0, taken)
    finally:
        await moved.stop(0)


async def test_a_restarted_service_listens_where_its_callers_still_call(tmp_path: Path) -> None:
    """A service on a free port (`serve` without MP_<NAME>_PORT) that stops and starts again
    takes the same port, so channels its callers opened to it reconnect (they read its address
    once)."""
    settings = MeshSettings(data_dir=tmp_path)
    ports = []
    for _ in range(2):
        running = await start_mesh(settings, None, only=("auth",))
        ports.append(running.services[0][1].port)
        await running.stop()
    assert ports[0] == ports[1] != 0
