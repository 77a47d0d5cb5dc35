"""Tracing is off unless OTEL_TRACES_EXPORTER names an installed exporter."""

import pytest

from magicpixels.core import tracing


@pytest.mark.parametrize("exporters", [None, "", "none"])
def test_without_an_exporter_tracing_stays_off(
    monkeypatch: pytest.MonkeyPatch, exporters: str | None
) -> None:
    if exporters is None:
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporters)
    assert tracing.configure_from_environment() is False
    assert not tracing.enabled()
    assert tracing.current_traceparent() is None
    assert tracing.grpc_server_interceptors() == []


def test_the_sdk_switch_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_from_environment() is False
    assert not tracing.enabled()


def test_an_exporter_not_installed_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(SystemExit, match="zipkin"):
        tracing.configure_from_environment()
    assert not tracing.enabled()


def test_instrumentations_named_disabled_stay_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "sqlalchemy, redis")
    tracing.enable(TracerProvider())
    try:
        assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry
        assert not RedisInstrumentor().is_instrumented_by_opentelemetry
        assert HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
        assert len(tracing.grpc_server_interceptors()) == 1
    finally:
        tracing.disable()
    assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
