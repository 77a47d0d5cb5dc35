"""A job carries its creating request's trace: webhook deliveries send it as `traceparent`."""

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from magicpixels.core import tracing
from tests.jobs.test_webhooks import Receiver, received, world
from tests.support import Database, recorded_spans


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().listening() as listening:
        yield listening


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


async def test_webhooks_carry_the_trace_of_the_request_that_created_the_job(
    database: Database, tmp_path: Path, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    secret_path = "/hooks/T0001/B0002/receiver-secret?token=receiver-secret"
    async with world(database, tmp_path) as w:
        with tracing.span("client request"):
            trace_id = trace.get_current_span().get_span_context().trace_id
            job = await w.create(receiver.url(secret_path))
        assert job.trace_parent.split("-")[1] == trace.format_trace_id(trace_id)
        await w.complete(await w.lease())
        await received(receiver, 2)
    for request in receiver.requests:
        version, sent_trace_id, _span_id, _flags = request.headers["traceparent"].split("-")
        assert (version, sent_trace_id) == ("00", trace.format_trace_id(trace_id))
    deliveries = [
        span for span in spans.get_finished_spans() if span.name == "jobs.deliver_webhook"
    ]
    assert len(deliveries) == 2
    assert all(span.context and span.context.trace_id == trace_id for span in deliveries)
    for span in spans.get_finished_spans():  # the receiver's secret path stays out of spans
        assert "receiver-secret" not in json.dumps(dict(span.attributes or {})), span.name


async def test_without_tracing_a_job_stores_no_trace(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with world(database, tmp_path) as w:
        job = await w.create(receiver.url())
        await w.complete(await w.lease())
        await received(receiver, 2)
    assert job.trace_parent == ""
    assert all("traceparent" not in request.headers for request in receiver.requests)
