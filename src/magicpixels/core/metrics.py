"""The mesh's Prometheus metrics, each defined once: RED for HTTP and gRPC, then the domain's.

Every series carries `service`, the service that counted it, so one registry serves a whole
`magicpixels up` process (the gateway's /metrics) as well as one `magicpixels serve` process
(its metrics port). Label values come from small fixed sets (route templates, methods, status
codes, modes, outcomes): no label holds an id, token, email, prompt or URL, so traffic adds
no series. docs/operations.md lists them with the alerts worth setting.
"""

from collections.abc import Iterable
from contextvars import ContextVar
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_wsgi_server,
)

# The service a call is made for, by the client interceptor: set by the server interceptor,
# the gateway, and around each service's start (its background tasks inherit it).
current_service: ContextVar[str] = ContextVar("metrics_service", default="mesh")

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_WAIT_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "magicpixels_http_requests",
    "HTTP requests answered, by route template, method and status class",
    ["service", "route", "method", "status_class"],
)
HTTP_DURATION = Histogram(
    "magicpixels_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method",
    ["service", "route", "method"],
    buckets=_SECONDS,
)
GRPC_SERVER_HANDLED = Counter(
    "magicpixels_grpc_server_handled",
    "RPCs a server answered, by full method and status code",
    ["service", "grpc_method", "grpc_code"],
)
GRPC_SERVER_DURATION = Histogram(
    "magicpixels_grpc_server_handling_seconds",
    "Time a server took to answer an RPC, by full method",
    ["service", "grpc_method"],
    buckets=_SECONDS,
)
GRPC_CLIENT_HANDLED = Counter(
    "magicpixels_grpc_client_handled",
    "RPCs made to other services, by full method and status code",
    ["service", "grpc_method", "grpc_code"],
)
GRPC_CLIENT_DURATION = Histogram(
    "magicpixels_grpc_client_handling_seconds",
    "Time an RPC made to another service took, by full method",
    ["service", "grpc_method"],
    buckets=_SECONDS,
)

JOBS_CREATED = Counter(
    "magicpixels_jobs_created", "Jobs accepted (their credits held), by mode", ["service", "mode"]
)
JOBS_ENDED = Counter(
    "magicpixels_jobs_ended",
    "Jobs that ended, by mode and outcome (completed, failed, canceled)",
    ["service", "mode", "outcome"],
)
QUEUE_DEPTH = Gauge(
    "magicpixels_queue_depth", "Jobs queued, waiting for a worker, by mode", ["service", "mode"]
)
QUEUE_OLDEST_AGE = Gauge(
    "magicpixels_queue_oldest_age_seconds",
    "How long the oldest queued job of the mode has waited since it was created (0: none)",
    ["service", "mode"],
)
JOB_LEASE_WAIT = Histogram(
    "magicpixels_job_create_to_lease_seconds",
    "Time from a job's creation to its first lease by a worker, by mode",
    ["service", "mode"],
    buckets=_WAIT_SECONDS,
)
LEASES_EXPIRED = Counter(
    "magicpixels_job_leases_expired",
    "Leases that ran out without a heartbeat (a worker went silent), by mode",
    ["service", "mode"],
)
JOB_RETRIES = Counter(
    "magicpixels_job_retries", "Jobs queued again for another attempt, by mode", ["service", "mode"]
)
WEBHOOK_DELIVERIES = Counter(
    "magicpixels_webhook_deliveries",
    "Webhook delivery attempts, by outcome (delivered, pending: retried later, failed: given "
    "up, refused: never sent)",
    ["service", "outcome"],
)
CREDITS_HELD = Gauge(
    "magicpixels_credits_held", "Credits held for jobs not yet settled, all accounts", ["service"]
)
CREDITS_HELD_PAST_EXPIRY = Gauge(
    "magicpixels_credits_held_past_expiry",
    "Credits of holds past their expiry that the billing sweeper has not released yet",
    ["service"],
)
CREDITS_CAPTURED = Counter(
    "magicpixels_credits_captured", "Credits spent by captured holds", ["service"]
)
CREDITS_RELEASED = Counter(
    "magicpixels_credits_released", "Credits given back by released holds", ["service"]
)
UPLOAD_BYTES = Counter(
    "magicpixels_upload_bytes",
    "Bytes stored as assets, by origin (upload, generated)",
    ["service", "origin"],
)
KEY_CACHE_LOOKUPS = Counter(
    "magicpixels_api_key_cache_lookups",
    "API key verifications by result: hit (served from memory) or miss (asked auth)",
    ["service", "result"],
)
RATE_LIMIT_REFUSALS = Counter(
    "magicpixels_rate_limit_refusals", "Requests refused with 429 rate_limited", ["service"]
)


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


def http_method(method: str) -> str:
    """The method as a label: anything unusual is OTHER, so a client cannot mint series."""
    return method if method in _HTTP_METHODS else "OTHER"


# The labelled series of each label set, found once: labels() costs more than the count.
_http_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_rpc_series: dict[tuple[bool, str, str, str], tuple[Any, Any]] = {}


def observe_http(route: str, method: str, status: int | None, seconds: float) -> None:
    key = (route, http_method(method), status_class(status))
    series = _http_series.get(key)
    if series is None:
        series = _http_series[key] = (
            HTTP_REQUESTS.labels("gateway", *key),
            HTTP_DURATION.labels("gateway", *key[:2]),
        )
    series[0].inc()
    series[1].observe(seconds)


def observe_rpc(server: bool, service: str, method: str, code: str, seconds: float) -> None:
    key = (server, service, method, code)
    series = _rpc_series.get(key)
    if series is None:
        handled, duration = (
            (GRPC_SERVER_HANDLED, GRPC_SERVER_DURATION)
            if server
            else (GRPC_CLIENT_HANDLED, GRPC_CLIENT_DURATION)
        )
        series = _rpc_series[key] = (
            handled.labels(service, method, code),
            duration.labels(service, method),
        )
    series[0].inc()
    series[1].observe(seconds)


def set_queue(
    service: str, modes: Iterable[str], queued: dict[str, tuple[int, datetime]], now: datetime
) -> None:
    """Sets depth and oldest age of every mode's queue; a mode with nothing queued reads 0."""
    for mode in modes:
        depth, oldest = queued.get(mode, (0, now))
        QUEUE_DEPTH.labels(service, mode).set(depth)
        QUEUE_OLDEST_AGE.labels(service, mode).set(max((now - oldest).total_seconds(), 0.0))


def exposition() -> tuple[bytes, str]:
    """The text format of every metric of this process, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(host: str, port: int) -> WSGIServer:
    """Serves /metrics on its own port, in a thread (a `magicpixels serve` process)."""
    server, _thread = start_wsgi_server(port, addr=host)
    structlog.get_logger("magicpixels.metrics").info("metrics_serving", port=server.server_port)
    return server
