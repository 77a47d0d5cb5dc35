"""A prometheus-client that records nothing, for bench/observability.py's `bare` variant.

That variant puts this folder ahead of the installed packages, so the mesh serves with no
metrics package loaded (and, tracing being off, no OpenTelemetry SDK or instrumentation): what
it measures against is this checkout without its instrumentation packages, not an older commit.
Only the names core/metrics.py takes from the package are here.
"""

from typing import Any

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = None


class _Metric:
    """Counter, Gauge and Histogram at once: each call does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *values: str, **named: str) -> "_Metric":
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


Counter = Gauge = Histogram = _Metric


def generate_latest(registry: object = None) -> bytes:
    return b""


def start_wsgi_server(port: int, addr: str = "0.0.0.0") -> Any:
    raise RuntimeError("the bench's stand-in serves no metrics port")
