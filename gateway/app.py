"""The gateway's ASGI app: routes, the one error shape for every failure, request context."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp

from magicpixels.core import tracing
from magicpixels.core.errors import DomainError
from magicpixels.gateway import (
    accounts,
    agents,
    assets,
    billing,
    jobs,
    keys,
    openai_images,
    openapi,
    ops,
)
from magicpixels.gateway.errors import ApiError, from_domain_error, from_rpc_error, internal_error
from magicpixels.gateway.job_views import AnsweredFromMemory
from magicpixels.gateway.middleware import BodyLimitMiddleware, RequestContextMiddleware
from magicpixels.gateway.ratelimit import Quota, RateLimitMiddleware
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import Gateway

log = structlog.get_logger("magicpixels.gateway")
# application/json, or a structured syntax suffix (application/merge-patch+json), any parameters.
_JSON_CONTENT_TYPE = re.compile(r"application/([\w.-]+\+)?json\s*(;|$)", re.IGNORECASE)

_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
# The routes that stream a file to the assets service, which holds it to its kind's limit.
STREAMED_BODIES = frozenset({("POST", "/v1/assets"), ("POST", "/v1/images/edits")})
_HTTP_ERRORS = {
    # FastAPI's answer to a body it could not decode (not UTF-8, nested too deep, a number
    # too long): JSON it cannot read.
    400: ("invalid_request_error", "json_invalid"),
    404: ("not_found_error", "route_not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
}


def create_app(shared: Gateway) -> ASGIApp:
    # The docs pages load Swagger UI and ReDoc from files shipped in a package, not a CDN, so
    # they render on a gateway that cannot reach the internet.
    app = FastAPIOffline(
        static_url="/docs/assets",
        title="MagicPixels API",
        version="1",
        description="Generation jobs, assets and credits. See the project's docs/API.md.",
        default_response_class=JSONResponse,
        lifespan=_lifespan,
        telemetry=tracing.FASTAPI_TELEMETRY_OFF,
    )
    app.state.gateway = shared
    settings = shared.settings
    for module in (accounts, keys, billing, jobs, assets, openai_images, ops):
        app.include_router(module.router)
    app.state.mcp = agents.mount(app, shared)
    openapi.install(app)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(grpc.aio.AioRpcError, _rpc_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    limited = RateLimitMiddleware(
        AnsweredFromMemory(
            BodyLimitMiddleware(app, STREAMED_BODIES),
            shared.job_views,
            _route(jobs.router, "GET", jobs.JOB_PATH),
        ),
        shared.limiter,
        per_key=Quota(settings.rate_limit_per_key, settings.rate_limit_per_key_seconds),
        per_ip=Quota(settings.rate_limit_per_ip, settings.rate_limit_per_ip_seconds),
        principal=shared.principal,
        own_quota=frozenset({agents.MCP_PATH}),
    )
    return tracing.instrument_asgi(RequestContextMiddleware(limited))


def _route(router: APIRouter, method: str, path: str) -> APIRoute:
    return next(
        route
        for route in router.routes
        if isinstance(route, APIRoute) and route.path == path and method in route.methods
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with app.state.gateway.running(), app.state.mcp.running():
        yield


async def _api_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error.response()


async def _rpc_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, grpc.aio.AioRpcError)
    mapped = from_rpc_error(error)
    if mapped.status >= 500:
        log.warning("downstream_failed", code=error.code().name, details=error.details())
    return mapped.response()


async def _domain_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DomainError)
    return from_domain_error(error).response()


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ApiError(
            400, "invalid_request_error", "json_invalid", "The body is not valid JSON."
        ).response()
    if tuple(first.get("loc", ())) == ("body",):
        return _whole_body_error(request.headers.get("content-type", ""), kind).response()
    # FastAPI locates a fault as ("body" | "query" | "path" | "header", name...).
    location = [str(part) for part in first.get("loc", ())[1:]]
    param = ".".join(location) or None
    code = {"missing": "parameter_missing", "extra_forbidden": "parameter_unknown"}.get(
        kind, "parameter_invalid"
    )
    message = (
        f"{param}: {first.get('msg', 'invalid')}"
        if param
        else str(first.get("msg", "invalid body"))
    )
    return ApiError(400, "invalid_request_error", code, message, param=param).response()


def _whole_body_error(content_type: str, kind: str) -> ApiError:
    """The body as a whole is wrong: missing, sent as another type than JSON (`curl -d` sends
    a form), or JSON that is not an object."""
    if kind == "missing":
        message = "The request needs a JSON body (Content-Type: application/json)."
        return ApiError(400, "invalid_request_error", "parameter_missing", message)
    if not _JSON_CONTENT_TYPE.match(content_type):
        message = "The body must be JSON, sent with Content-Type: application/json."
        return ApiError(415, "invalid_request_error", "unsupported_media_type", message)
    return ApiError(
        400, "invalid_request_error", "parameter_invalid", "The body must be a JSON object."
    )


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    error_type, code = _HTTP_ERRORS.get(
        error.status_code, ("invalid_request_error", "request_invalid")
    )
    headers = dict(error.headers or {})
    if error.status_code == 405:  # Starlette names the methods of one route of the path
        headers["Allow"] = ", ".join(_methods_of(request))
    return ApiError(
        error.status_code, error_type, code, str(error.detail), headers=headers
    ).response()


def _methods_of(request: Request) -> list[str]:
    """The methods the request's path takes: those some route matches in full."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


async def _unexpected_error(_request: Request, error: Exception) -> JSONResponse:
    log.error("unhandled_error", exc_info=error)
    return internal_error().response()
