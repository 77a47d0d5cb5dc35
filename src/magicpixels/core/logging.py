"""structlog: JSON lines off a terminal, readable lines on one; secrets never logged."""

import logging
import re
import sys
from typing import Any

import structlog
from opentelemetry import trace

_SECRET_KEYS = frozenset({"token", "secret", "signature", "pepper", "authorization", "password"})
_TOKEN_PATTERN = re.compile(r"mp_(live|test)_[A-Za-z0-9]+\.[A-Za-z0-9]+|whsec_[A-Za-z0-9+/=]+")


def _redact(value: Any) -> Any:
    return _TOKEN_PATTERN.sub("[redacted]", value) if isinstance(value, str) else value


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {
        key: "[redacted]" if key in _SECRET_KEYS else _redact(value) for key, value in event.items()
    }


def add_trace_ids(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Names the active span beside the request id, so a log line leads to its trace."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = trace.format_trace_id(span_context.trace_id)
        event["span_id"] = trace.format_span_id(span_context.span_id)
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Our logs at `level`; libraries' (uvicorn, grpc, alembic) at warning, in the same format."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # The list loggers already made hold is filled anew rather than replaced, so a logger made
    # (and cached) before a second configuration follows it, as tests' capture_logs expects.
    processors = structlog.get_config()["processors"]
    processors[:] = [*shared, structlog.processors.format_exc_info, redact_secrets, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # The stream is looked up when a logger is made, so a replaced sys.stderr is followed.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
        )
    )
    logging.basicConfig(handlers=[handler], level=logging.WARNING, force=True)
