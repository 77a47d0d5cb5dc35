"""Channels to the other services: service token, request id, a deadline and trace context on
every call, and each call measured.

The channel wraps grpc.aio's rather than adding client interceptors: grpc.aio runs an
intercepted call in a task of its own, around the call's own task, which is about a fifth of
the CPU of a call between two services of one process. For the same reason a call has no
client span of its own (the grpc instrumentation's client interceptors would add that task):
while tracing is on, its metadata carries the caller's trace context, and the callee's server
span, a child of the caller's span, times it.
"""

import asyncio
import time
from collections.abc import Generator
from functools import partialmethod
from typing import Any

import grpc

from magicpixels.core import metrics, tracing
from magicpixels.core.context import REQUEST_ID_HEADER, current_request_id, within_deadline

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
    """What every call carries: the service token, the request id and a deadline."""

    def __init__(self, service_token: str, default_timeout: float) -> None:
        self._authorization = ("authorization", f"Bearer {service_token}")
        self._default_timeout = default_timeout

    def metadata(self, given: Any, traced: bool) -> list[tuple[str, str | bytes]]:
        metadata = [*(given or ()), self._authorization]
        if not any(key == REQUEST_ID_HEADER for key, _ in metadata):
            metadata.append((REQUEST_ID_HEADER, current_request_id()))
        if traced:
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            metadata.extend(carrier.items())
        return metadata

    def timeout(self, given: float | None) -> float:
        return within_deadline(given if given is not None else self._default_timeout)


_recording: set["asyncio.Future[None]"] = set()


def _record(method: str, code: grpc.StatusCode, started: float) -> None:
    metrics.observe_rpc(
        False, metrics.current_service.get(), method, code.name, time.perf_counter() - started
    )


def _measure_when_done(call: Any, method: str, started: float) -> None:
    """Counts a call whose responses the caller reads after it was handed back."""
    service = metrics.current_service.get()

    async def record() -> None:
        code = await call.code()
        metrics.observe_rpc(False, service, method, code.name, time.perf_counter() - started)

    def done(_call: Any) -> None:
        task = asyncio.ensure_future(record())
        _recording.add(task)  # held until it ran: the loop keeps only weak references
        task.add_done_callback(_recording.discard)

    call.add_done_callback(done)


class _MeasuredUnaryCall:
    """A unary call, measured when it is awaited; otherwise the call itself (its trailing
    metadata, its code, cancel)."""

    def __init__(self, call: Any, method: str, started: float) -> None:
        self._call = call
        self._method = method
        self._started = started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            response = yield from self._call.__await__()
        except grpc.aio.AioRpcError as error:
            _record(self._method, error.code(), self._started)
            raise
        except asyncio.CancelledError:
            _record(self._method, grpc.StatusCode.CANCELLED, self._started)
            raise
        _record(self._method, grpc.StatusCode.OK, self._started)
        return response


class _MultiCallable:
    """One method of a stub: each call gets the context's metadata and deadline."""

    def __init__(self, inner: Any, method: str, context: _CallContext, kind: str) -> None:
        self._inner = inner
        self._method = method
        self._context = context
        self._kind = kind

    def __call__(
        self, request: Any = None, *, timeout: float | None = None, metadata: Any = None, **kw: Any
    ) -> Any:
        started = time.perf_counter()
        call = self._inner(
            request,
            timeout=self._context.timeout(timeout),
            metadata=self._context.metadata(metadata, tracing.enabled()),
            **kw,
        )
        if self._kind == "unary_unary":
            return _MeasuredUnaryCall(call, self._method, started)
        # The streaming kinds are measured once they end: the caller reads or writes first.
        _measure_when_done(call, self._method, started)
        return call


class MeshChannel:
    """A grpc.aio channel whose stubs' calls carry the call context and are measured."""

    def __init__(self, channel: grpc.aio.Channel, context: _CallContext) -> None:
        self._channel = channel
        self._context = context

    def __getattr__(self, name: str) -> Any:  # close, channel_ready, get_state...
        return getattr(self._channel, name)

    async def __aenter__(self) -> "MeshChannel":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close()

    def _multicallable(self, kind: str, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        inner = getattr(self._channel, kind)(method, *args, **kwargs)
        return _MultiCallable(inner, method, self._context, kind)

    unary_unary = partialmethod(_multicallable, "unary_unary")
    unary_stream = partialmethod(_multicallable, "unary_stream")
    stream_unary = partialmethod(_multicallable, "stream_unary")
    stream_stream = partialmethod(_multicallable, "stream_stream")


def open_channel(address: str, *, service_token: str, timeout: float) -> Any:
    """A channel whose every call carries the service token, the request id and a deadline.

    `timeout` is the deadline of a call that sets none and inherits none from the RPC it serves.
    """
    channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
    return MeshChannel(channel, _CallContext(service_token, timeout))
