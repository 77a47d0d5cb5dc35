"""The one gRPC server bootstrap: health, reflection, interceptors, graceful stop."""

import asyncio
import hmac
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from magicpixels.core import metrics, tracing
from magicpixels.core.context import REQUEST_ID_HEADER, set_deadline
from magicpixels.core.errors import INTERNAL_STATUS, DomainError, passthrough_status
from magicpixels.core.ids import new_id

log = structlog.get_logger("magicpixels.rpc")

# Probes and tooling reach these without the service token.
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and the generated function that adds it to a server."""

    name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Checks the service token, binds the request id and deadline, maps errors, logs and
    measures each RPC (as `service`, which the calls it makes are counted for too)."""

    def __init__(self, service_token: str, service: str = "mesh") -> None:
        self._expected = f"Bearer {service_token}".encode()
        self.service = service
        # Each method's handler and its wrapped one, so that a call does not wrap it anew (a
        # method has one handler; should one answer another, that one is wrapped).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_SERVICES):
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None or wrapped[0] is not handler:
            scope = partial(_RpcScope, self, details.method)
            wrapped = self._wrapped[details.method] = (handler, _wrap_handler(handler, scope))
        return wrapped[1]

    def authorized(self, metadata: dict[str, Any]) -> bool:
        presented = metadata.get("authorization", "")
        presented = presented.encode() if isinstance(presented, str) else presented
        return hmac.compare_digest(presented, self._expected)


class _RpcScope:
    """One RPC, around its servicer method: a class rather than an @asynccontextmanager, as
    this runs on every call of every service and a generator costs several times more."""

    __slots__ = ("_bound", "_code", "_context", "_interceptor", "_method", "_started")

    def __init__(
        self, interceptor: ServerInterceptor, method: str, context: grpc.aio.ServicerContext
    ) -> None:
        self._interceptor = interceptor
        self._method = method
        self._context = context
        self._code = grpc.StatusCode.OK

    async def __aenter__(self) -> None:
        metadata = dict(self._context.invocation_metadata() or ())
        request_id = metadata.get(REQUEST_ID_HEADER) or new_id("req")
        self._started = time.perf_counter()
        metrics.current_service.set(self._interceptor.service)
        # Not bind_contextvars' tokens: a stream its caller left is closed in another context.
        self._bound = structlog.contextvars.bound_contextvars(
            request_id=request_id, rpc=self._method
        )
        self._bound.__enter__()
        if not self._interceptor.authorized(metadata):
            self._code = grpc.StatusCode.UNAUTHENTICATED
            try:
                await self._context.abort(self._code, "missing or wrong service token")
            finally:
                self._end()
        set_deadline(self._context.time_remaining())

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _traceback: Any
    ) -> None:
        try:
            if error is not None:
                await self._answer(error)
        finally:
            self._end()

    async def _answer(self, error: BaseException) -> None:
        """Maps an error the servicer raised to the status the caller gets (by aborting)."""
        context = self._context
        if isinstance(error, DomainError):
            self._code = error.code
            await context.abort_with_status(error.to_status())
        elif isinstance(error, grpc.aio.AioRpcError):  # a call this RPC made failed: answer that
            status = passthrough_status(error)
            self._code = status.code
            await context.abort_with_status(status)
        elif isinstance(error, (asyncio.CancelledError, grpc.aio.AbortError)):
            self._code = context.code() or grpc.StatusCode.CANCELLED  # type: ignore[assignment]
        elif isinstance(error, Exception):
            log.exception("rpc_failed", exc_info=error)
            self._code = grpc.StatusCode.INTERNAL
            await context.abort_with_status(INTERNAL_STATUS)

    def _end(self) -> None:
        """Measures and logs the call, then unbinds its request id."""
        seconds = time.perf_counter() - self._started
        code = self._code.name
        metrics.observe_rpc(True, self._interceptor.service, self._method, code, seconds)
        log.info("rpc", code=code, duration_ms=round(seconds * 1000, 2))
        self._bound.__exit__(None, None, None)


def _wrap_handler(
    handler: grpc.RpcMethodHandler, scope: Callable[[grpc.aio.ServicerContext], _RpcScope]
) -> grpc.RpcMethodHandler:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                async for response in inner_us(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async with scope(context):
            async for response in inner_ss(requests, context):
                yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: Sequence[str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float) -> None:
        """Tells probes and balancers to go elsewhere, then lets in-flight calls finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    bindings: Sequence[ServiceBinding],
    *,
    host: str,
    port: int,
    service_token: str,
    service: str = "mesh",
    any_port_else: bool = False,
) -> RunningServer:
    """Serves the bindings on `port` (0: a free one); with `any_port_else`, on a free one
    when `port` is taken."""
    server = grpc.aio.server(
        # The tracing interceptor first: its span encloses ours, so our log lines name it.
        interceptors=[
            *tracing.grpc_server_interceptors(),
            ServerInterceptor(service_token, service),
        ],
        options=[
            # Clients reconnect, and so rebalance, at least this often.
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
            # A port in use is refused, not shared with whoever holds it.
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    names = [binding.name for binding in bindings]
    reflection.enable_server_reflection(
        [*names, reflection.SERVICE_NAME, health.SERVICE_NAME], server
    )
    try:
        bound_port = _bind(server, host, port, any_port_else)
    except RuntimeError:
        await server.stop(None)
        raise
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("grpc_server_started", services=names, port=bound_port)
    return RunningServer(server, bound_port, health_servicer, names)


def _bind(server: grpc.aio.Server, host: str, port: int, any_port_else: bool) -> int:
    try:
        return server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        if not any_port_else or port == 0:
            raise
    return server.add_insecure_port(f"{host}:0")


def gateway_socket(host: str, port: int) -> socket.socket:
    """The gateway's listening TCP socket; an OSError that says which setting to change when
    the port is taken."""
    try:
        return socket.create_server((host, port))
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot listen on {host}:{port} ({error.strerror}); "
            "choose another port with --port or MP_GATEWAY_PORT",
        ) from None


async def wait_for_stop_signal() -> None:
    """Returns on the first SIGTERM or SIGINT, so the caller can stop gracefully."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
