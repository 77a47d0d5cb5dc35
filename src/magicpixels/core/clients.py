"""Channels to the other services: service token, request id and a deadline on every call."""

from typing import Any

import grpc

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
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        inherited = time_left()
        if inherited is not None:
            timeout = max(0.0, min(timeout, inherited))
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first of the four kinds it is an instance of, so
# each kind of call needs its own interceptor object.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.context.details(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.context.details(details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self.context.details(details), requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, context: _CallContext) -> None:
        self.context = context

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self.context.details(details), requests)


def open_channel(address: str, *, service_token: str, timeout: float) -> grpc.aio.Channel:
    """A channel whose every call carries the service token, the request id and a deadline.

    `timeout` is the deadline of a call that sets none and inherits none from the RPC it serves.
    """
    context = _CallContext(service_token, timeout)
    return grpc.aio.insecure_channel(
        address,
        options=_CHANNEL_OPTIONS,
        interceptors=[
            kind(context) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
        ],
    )
