"""Pure ASGI middleware (BaseHTTPMiddleware would break contextvars): request ids, access logs,
and a last-resort error shape for anything that escaped the routes."""

import time
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from magicpixels.core import metrics, tracing
from magicpixels.core.ids import new_id
from magicpixels.gateway.errors import ApiError, internal_error

log = structlog.get_logger("magicpixels.gateway")

_MAX_REQUEST_ID = 128


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if 0 < len(text) <= _MAX_REQUEST_ID and text.isprintable() and text.isascii():
                return text
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or new_id("req")
        header = (b"x-request-id", request_id.encode())
        outcome: dict[str, Any] = {"status": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), header]
                tracing.name_request_span(scope)  # routed by now; the span ends with the body
            await send(message)

        started = time.perf_counter()
        metrics.current_service.set("gateway")
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                if outcome["status"] is None:
                    log.exception("request_failed")
                    await internal_error().response()(scope, receive, send_with_id)
                elif outcome["status"] != 500:  # a 500 was answered, and logged, by its handler
                    log.exception("response_failed")
            finally:
                seconds = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None)
                # Never the raw path: it holds ids. A request no route took (a 404, a refused
                # rate) counts as "unmatched".
                metrics.observe_http(
                    route or "unmatched", scope["method"], outcome["status"], seconds
                )
                log.info(
                    "http",
                    method=scope["method"],
                    route=route,
                    status=outcome["status"],
                    duration_ms=round(seconds * 1000, 2),
                )


# A JSON body at its largest (a job's prompts, metadata and webhook URL) is tens of KiB.
MAX_JSON_BODY_BYTES = 1024 * 1024
_TOO_LARGE = f"The body is over {MAX_JSON_BODY_BYTES // 1024} KiB, more than any request needs."


class BodyLimitMiddleware:
    """Refuses a /v1 body over MAX_JSON_BODY_BYTES with 413, but on the routes that stream files
    (`streamed`: method and path), whose service holds each file to its own limit. Without it a
    large body was read whole and sent on, and gRPC's message limit made it a 500.

    Written here because Starlette's RequestBodyLimitMiddleware (FastAPI's max_body_size) turns
    any answer to a body it judged too large into its own text, not the API's error shape."""

    def __init__(self, app: ASGIApp, streamed: frozenset[tuple[str, str]]) -> None:
        self.app = app
        self._streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith("/v1/")
            or (scope["method"], scope["path"]) in self._streamed
        ):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_JSON_BODY_BYTES:
            refused = ApiError(413, "invalid_request_error", "payload_too_large", _TOO_LARGE)
            await refused.response()(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_JSON_BODY_BYTES:  # a chunked body: the gateway's 413 handler
                raise HTTPException(413, _TOO_LARGE)
            return message

        await self.app(scope, receive_within_limit, send)
