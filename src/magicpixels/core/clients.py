"""Channels to the other services: service token, request id, a deadline and trace context on
every call, and each call measured."""

import asyncio
import time
from typing import Any

import grpc

from magicpixels.core import metrics, tracing
from magicpixels.core.context import REQUEST_ID_HEADER, current_request_id, time_left

# Client-side round-robin over every address a (headless Service) name resolves to.
_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # A peer that was away (a restart, a rollout) is tried again at least every 5 s, not after
    # a backoff grown to gRPC's default 120 s, during which every call fails at once.
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


class _CallContext:
    """Adds the service token, the request id and a deadline to a call's details."""

    def __init__(self, service_token: str, default_timeout: float) -> None:
        self._authorization = f"Bearer {service_token}"
        self._default_timeout = default_timeout

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["authorization"] = self._authorization
        if REQUEST_ID_HEADER not in metadata:
            metadata[REQUEST_ID_HEADER] = current_request_id()
        if tracing.enabled():  # for the calls no tracing interceptor wraps (stream-unary)
            tracing.inject(metadata)
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        inherited = time_left()
        if inherited is not None:
            timeout = max(0.0, min(timeout, inherited))
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


_recording: set["asyncio.Future[None]"] = set()


def _method(details: grpc.aio.ClientCallDetails) -> str:
    # grpc.aio hands interceptors the method as bytes (grpc/grpc#31092); str, once fixed.
    method: str | bytes = details.method
    return method.decode() if isinstance(method, bytes) else method


def _measure_when_done(call: Any, details: grpc.aio.ClientCallDetails, started: float) -> None:
    """Counts a call whose responses the caller reads after the interceptor returned."""
    service, method = metrics.current_service.get(), _method(details)

    async def record() -> None:
        code = await call.code()
        metrics.observe_rpc(False, service, method, code.name, time.perf_counter() - started)

    def done(_call: Any) -> None:
        task = asyncio.ensure_future(record())
        _recording.add(task)  # held until it ran: the loop keeps only weak references
        task.add_done_callback(_recording.discard)

    call.add_done_callback(done)


# grpc.aio files an interceptor under the first of the four kinds it is an instance of, so
# each kind of call needs its own interceptor object.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        started = time.perf_counter()
        call = await continuation(self.context.details(details), request)
        try:
            code = await call.code()  # a unary answer: waiting for it here delays nobody
        except asyncio.CancelledError:  # the caller gave up: so does the call, as without us
            call.cancel()
            raise
        metrics.observe_rpc(
            False,
            metrics.current_service.get(),
            _method(details),
            code.name,
            time.perf_counter() - started,
        )
        return call


# The streaming kinds may not wait for the end here: the caller reads or writes first.
class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        started = time.perf_counter()
        call = await continuation(self.context.details(details), request)
        _measure_when_done(call, details, started)
        return call


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        started = time.perf_counter()
        call = await continuation(self.context.details(details), requests)
        _measure_when_done(call, details, started)
        return call


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        started = time.perf_counter()
        call = await continuation(self.context.details(details), requests)
        _measure_when_done(call, details, started)
        return call


def open_channel(address: str, *, service_token: str, timeout: float) -> grpc.aio.Channel:
    """A channel whose every call carries the service token, the request id and a deadline.

    `timeout` is the deadline of a call that sets none and inherits none from the RPC it serves.
    """
    context = _CallContext(service_token, timeout)
    return grpc.aio.insecure_channel(
        address,
        options=_CHANNEL_OPTIONS,
        interceptors=[
            *tracing.grpc_client_interceptors(),
            *(kind(context) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)),
        ],
    )
