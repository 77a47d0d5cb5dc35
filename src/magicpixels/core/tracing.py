"""OpenTelemetry traces: off unless the standard OTEL_* variables turn them on.

`OTEL_TRACES_EXPORTER` (otlp, console, none; default none, unlike the SDK's otlp: an embedded
mesh has no collector), `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`
and the rest are read by the SDK itself. While tracing is off, nothing here loads the SDK or an
instrumentation, and every helper is a no-op.

W3C trace context crosses every gRPC hop (core/clients.py injects it into each call's metadata;
the grpc instrumentation's server interceptor, added by core/server.py, takes it up) and the
queue: a job stores the `traceparent` of the
request that created it, so that the worker's spans and the webhook deliveries join that trace.

Span attributes are the instrumentations' (methods, routes, status codes, statement shapes,
hosts) and ours (modes, attempts): never a token, a secret, a prompt, or a URL's query.
"""

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.types import ASGIApp

_TRACEPARENT = "traceparent"
# `OTEL_TRACES_EXPORTER` names, to the SDK's entry point names.
_EXPORTER_ALIASES = {"otlp": "otlp_proto_grpc"}
_provider: "TracerProvider | None" = None


def enabled() -> bool:
    return _provider is not None


def configure_from_environment(default_service_name: str = "magicpixels") -> bool:
    """Turns tracing on when OTEL_TRACES_EXPORTER names an exporter; whether it did."""
    names = [
        name.strip()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")
        if name.strip() not in ("", "none")
    ]
    if not names or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    install(provider)
    return True


def install(provider: "TracerProvider") -> None:
    """`provider` as the process's global tracer provider too (once a process), then `enable`."""
    trace.set_tracer_provider(provider)
    enable(provider)


def _exporter(name: str) -> "SpanExporter":
    name = _EXPORTER_ALIASES.get(name, name)
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise SystemExit(f"magicpixels: OTEL_TRACES_EXPORTER names {name!r}, not installed")
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def enable(provider: "TracerProvider") -> None:
    """Traces into `provider` from now on: SQLAlchemy, Redis and HTTPX are instrumented (but
    those OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names: `sqlalchemy`, `redis`, `httpx`), and
    servers, channels and apps made from now on carry the interceptors and middleware."""
    global _provider
    _provider = provider
    disabled = {
        name.strip()
        for name in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    }
    for name, (instrumentor, options) in _instrumentors().items():
        if name not in disabled:
            instrumentor.instrument(tracer_provider=provider, **options)
    _without_connect_spans()


def _without_connect_spans() -> None:
    """The SQLAlchemy instrumentation also times each pool checkout as a `connect` span (three
    in one POST /v1/jobs, a fifth of its spans) that says nothing its statements' spans do not:
    its patch of Engine.connect is taken back, the statements' event listeners stay."""
    from opentelemetry.instrumentation.utils import unwrap
    from sqlalchemy.engine.base import Engine

    unwrap(Engine, "connect")


def disable() -> None:
    """Stops tracing (for tests): what `enable` instrumented is restored."""
    global _provider
    for instrumentor, _options in _instrumentors().values():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _provider = None


def _instrumentors() -> dict[str, tuple[Any, dict[str, Any]]]:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    return {
        # It declares SQLAlchemy < 2.1; the engine events it listens to are the same in 2.1.
        "sqlalchemy": (
            SQLAlchemyInstrumentor(),
            {"enable_commenter": False, "skip_dep_check": True},
        ),
        "redis": (RedisInstrumentor(), {}),
        "httpx": (
            HTTPXClientInstrumentor(),
            {"request_hook": _origin_only, "async_request_hook": _async_origin_only},
        ),
    }


def _origin_only(span: Any, request: Any) -> None:
    """A webhook URL's path and query may hold the receiver's secret: spans keep the origin."""
    if span.is_recording():
        origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
        for key in ("http.url", "url.full"):
            span.set_attribute(key, origin)


async def _async_origin_only(span: Any, request: Any) -> None:
    _origin_only(span, request)


def grpc_server_interceptors() -> list[Any]:
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider)]


# FastAPI's own telemetry turns itself on once a global tracer provider is set (`install`):
# a second server span per request, beside the ASGI instrumentation's, and spans of its own
# for dependencies and endpoints, whose attributes (a query string) are not ours to choose.
# The gateway's one HTTP span is the ASGI instrumentation's, around the middleware too.
FASTAPI_TELEMETRY_OFF: "TelemetryConfig" = {"tracing": False, "metrics": False, "logs": False}


def instrument_asgi(app: "ASGIApp") -> "ASGIApp":
    """The app inside a server span per request, named by method until the route is known."""
    if _provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    wrapped: ASGIApp = OpenTelemetryMiddleware(
        app,
        tracer_provider=_provider,
        default_span_details=lambda scope: (scope.get("method", "HTTP"), {}),
        server_request_hook=_path_without_query,
        exclude_spans=["receive", "send"],
    )
    return wrapped


def _path_without_query(span: Any, scope: Mapping[str, Any]) -> None:
    """A signed URL's query holds its signature: spans keep the path alone (in those of the
    old and the new semantic conventions' attributes that the instrumentation set)."""
    if not span.is_recording():
        return
    path = scope.get("path", "")
    kept = {"http.target": path, "http.url": path, "url.full": path, "url.query": ""}
    for key, value in kept.items():
        if key in span.attributes:
            span.set_attribute(key, value)


def name_request_span(scope: Mapping[str, Any]) -> None:
    """Names the current HTTP span by its route template, once routing found one."""
    span = trace.get_current_span()
    route = getattr(scope.get("route"), "path", None)
    if route and span.is_recording():
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with work done later; None when off."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(_TRACEPARENT)


def inject(headers: dict[str, str]) -> None:
    """Adds the current span's traceparent to outgoing headers."""
    propagate.inject(headers)


@contextlib.contextmanager
def joined(traceparent: str | None) -> Iterator[None]:
    """Spans started inside join the trace `traceparent` names (one stored with a job)."""
    if _provider is None or not traceparent:
        yield
        return
    token = context.attach(propagate.extract({_TRACEPARENT: traceparent}))
    try:
        yield
    finally:
        context.detach(token)


def current_span_context() -> trace.SpanContext | None:
    """The current span's context, to link to from work done for it later; None when off."""
    if _provider is None:
        return None
    found = trace.get_current_span().get_span_context()
    return found if found.is_valid else None


def span(
    name: str,
    attributes: Mapping[str, str | int] | None = None,
    start_time: int | None = None,
    parent: trace.SpanContext | None = None,
    links: Sequence[trace.SpanContext] = (),
) -> contextlib.AbstractContextManager[Any]:
    """A span of ours, current inside; nothing while tracing is off. `parent`: its parent when
    not the current span; `links`: the spans of other traces it does work for (a batch's other
    callers)."""
    if _provider is None:
        return contextlib.nullcontext()
    tracer = _provider.get_tracer("magicpixels")
    return tracer.start_as_current_span(
        name,
        None if parent is None else trace.set_span_in_context(trace.NonRecordingSpan(parent)),
        attributes=attributes,
        start_time=start_time,
        links=[trace.Link(linked) for linked in links],
    )
