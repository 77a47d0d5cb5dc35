"""Pure ASGI middleware (BaseHTTPMiddleware would break contextvars): request ids, access logs,
and a last-resort error shape for anything that escaped the routes."""

import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from magicpixels.core import metrics, tracing
from magicpixels.core.ids import new_id
from magicpixels.gateway.errors import internal_error

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
