"""Traces across the mesh: one POST /v1/jobs is one trace, from the gateway through jobs and
billing to the worker and its result upload, with no secret, token or prompt in a span."""

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from magicpixels import cli
from magicpixels.core import tracing
from magicpixels.core.logging import configure_logging
from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import API_EXAMPLE, sign_up
from tests.processes import free_port, magicpixels, ready, stop, wait_for
from tests.support import eventually, recorded_spans

PROMPT = "A secret lighthouse prompt, never in a span"
JOB = {**API_EXAMPLE, "prompt": PROMPT, "width": 64, "height": 64}

# What a span may say: the instrumentations' request shapes, and our modes and sizes.
ALLOWED_ATTRIBUTES = {
    "http.method", "http.request.method", "http.route", "http.scheme", "url.scheme",
    "http.host", "server.address", "server.port", "net.host.port", "net.host.name",
    "http.server_name", "http.flavor", "network.protocol.version", "http.target", "url.path",
    "url.query", "http.url", "url.full", "http.user_agent", "user_agent.original",
    "net.peer.ip", "net.peer.port", "client.address", "client.port", "network.peer.address",
    "network.peer.port", "http.status_code", "http.response.status_code",
    "rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "rpc.user_agent",
    "db.system", "db.name", "db.statement", "db.operation", "db.user", "net.peer.name",
    "net.transport", "db.redis.database_index", "db.redis.args_length", "error.type",
    "magicpixels.job.mode", "magicpixels.job.attempt", "magicpixels.size_bytes",
    "magicpixels.webhook.event_type", "magicpixels.batch_size",
}  # fmt: skip


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span into memory, on before the mesh starts (its servers and channels are traced
    as they are made)."""
    with recorded_spans() as exporter:
        yield exporter


def trace_of(exporter: InMemorySpanExporter, root_name: str) -> list[ReadableSpan]:
    (root,) = [span for span in exporter.get_finished_spans() if span.name == root_name]
    assert root.context is not None
    return [
        span
        for span in exporter.get_finished_spans()
        if span.context is not None and span.context.trace_id == root.context.trace_id
    ]


async def test_one_job_is_one_trace_without_secrets(
    client: httpx.AsyncClient, running_mesh: RunningMesh, spans: InMemorySpanExporter
) -> None:
    account_id, token = await sign_up(client)
    data_dir = str(running_mesh.mesh.settings.data_dir)
    grant = ["admin", "grant-credits", account_id, "20", "--data-dir", data_dir]
    await asyncio.to_thread(cli.main, grant)
    auth = {"Authorization": f"Bearer {token}"}
    response = await client.post("/v1/jobs", json=JOB, headers={**auth, "Prefer": "wait=30"})
    assert response.json()["status"] == "completed"
    signed_url = response.json()["result"]["url"]
    assert (await client.get(signed_url)).status_code == 200

    async def completed() -> bool:  # the worker's last span ends after the job is answered
        names = {span.name for span in trace_of(spans, "POST /v1/jobs")}
        return "/magicpixels.jobs.v1.JobsService/CompleteJob" in names

    await eventually(completed)
    job_trace = trace_of(spans, "POST /v1/jobs")
    names = {span.name for span in job_trace}
    assert {
        "POST /v1/jobs",
        "/magicpixels.jobs.v1.JobsService/CreateJob",
        "/magicpixels.billing.v1.BillingService/Reserve",
        "inference.lease",
        "inference.generate",
        "inference.upload_result",
        "/magicpixels.assets.v1.AssetsService/UploadAsset",
        "/magicpixels.jobs.v1.JobsService/CompleteJob",
    } <= names, names
    # One tree: its root is this test's request (httpx is instrumented too); the worker's
    # spans hang off the CreateJob that queued the job, and database statements are in it.
    by_id = {span.context.span_id: span for span in job_trace if span.context}
    (root,) = [span for span in job_trace if span.parent is None]
    assert root.kind == SpanKind.CLIENT

    def path_to_root(span: ReadableSpan) -> list[str]:
        names = [span.name]
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    (lease,) = [span for span in job_trace if span.name == "inference.lease"]
    assert path_to_root(lease)[1:] == [
        "/magicpixels.jobs.v1.JobsService/CreateJob",  # the server's span: no client span
        "POST /v1/jobs",
        root.name,
    ]
    (upload,) = [span for span in job_trace if span.name.endswith("AssetsService/UploadAsset")]
    assert path_to_root(upload)[1:3] == [
        "inference.upload_result",
        lease.parent and by_id[lease.parent.span_id].name,
    ]
    assert any(span.attributes and "db.statement" in span.attributes for span in job_trace)
    assert "connect" not in names  # a pool checkout is no span: its statements are

    secrets = (token, PROMPT, signed_url.split("?")[1], "test-service-token")
    for span in spans.get_finished_spans():
        attributes = dict(span.attributes or {})
        assert set(attributes) <= ALLOWED_ATTRIBUTES, (span.name, attributes)
        written = json.dumps([span.name, attributes], default=str)
        for secret in secrets:
            assert secret not in written, (span.name, secret)


async def test_log_lines_name_the_active_span(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        with tracing.span("work"):
            structlog.get_logger("t").info("inside")
        structlog.get_logger("t").info("outside")
    finally:
        configure_logging("warning", "console")
    inside, outside = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", inside["span_id"])
    assert "trace_id" not in outside


def test_console_exporter_prints_the_spans_of_up(tmp_path: Path) -> None:
    tracing.disable()  # this process's tracing stays out of the child's
    port = free_port()
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    log = tmp_path / "up.log"
    with magicpixels("up", "--port", str(port), data_dir=tmp_path / "data", env=env, log=log) as up:
        wait_for(lambda: ready(port), "the mesh")
        signup = {"email": "ada@example.com"}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/accounts", json=signup).status_code == 201
        assert stop(up) == 0
    printed = log.read_text()
    for name in ("POST /v1/accounts", "/magicpixels.auth.v1.AuthService/CreateAccount"):
        assert f'"name": "{name}"' in printed, name
    assert '"service.name": "magicpixels"' in printed
    # The process's provider is the global one here, which FastAPI's own telemetry would take
    # up: the request is still one HTTP span (the ASGI instrumentation's), with no FastAPI span.
    spans = printed_spans(printed)
    http = [span["name"] for span in spans if span["kind"] == "SpanKind.SERVER"]
    assert http.count("POST /v1/accounts") == 1, http
    assert "POST" not in http, http  # FastAPI's, named by the method alone
    assert not [span["name"] for span in spans if span["name"].startswith("fastapi.")]


def printed_spans(printed: str) -> list[dict[str, Any]]:
    """The console exporter's spans among the log lines: each a JSON object over many lines,
    from a line "{" to a line "}"."""
    blocks = re.findall(r"^\{\n.*?^\}$", printed, flags=re.MULTILINE | re.DOTALL)
    return [json.loads(block) for block in blocks]
