"""GET /metrics over real HTTP: what one job adds to the counts, and that ids add no series."""

import asyncio
import urllib.request

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from magicpixels import cli
from magicpixels.core.metrics import serve_metrics
from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import API_EXAMPLE, sign_up
from tests.support import eventually

SMALL = {**API_EXAMPLE, "width": 64, "height": 64}
CREATE_JOB = "/magicpixels.jobs.v1.JobsService/CreateJob"
RESERVE = "/magicpixels.billing.v1.BillingService/Reserve"

TYPES = {
    "magicpixels_http_requests": "counter",
    "magicpixels_http_request_duration_seconds": "histogram",
    "magicpixels_grpc_server_handled": "counter",
    "magicpixels_grpc_server_handling_seconds": "histogram",
    "magicpixels_grpc_client_handled": "counter",
    "magicpixels_grpc_client_handling_seconds": "histogram",
    "magicpixels_jobs_created": "counter",
    "magicpixels_jobs_ended": "counter",
    "magicpixels_queue_depth": "gauge",
    "magicpixels_queue_oldest_age_seconds": "gauge",
    "magicpixels_job_create_to_lease_seconds": "histogram",
    "magicpixels_credits_held": "gauge",
    "magicpixels_credits_captured": "counter",
    "magicpixels_upload_bytes": "counter",
    "magicpixels_api_key_cache_lookups": "counter",
}


@pytest.fixture(autouse=True)
def generous_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hundred jobs in a row stay within the key's quota (set before the mesh starts)."""
    monkeypatch.setenv("MP_GATEWAY_RATE_LIMIT_PER_KEY", "100000")


async def scrape(client: httpx.AsyncClient) -> dict[str, tuple[str, list[Sample]]]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        family.name: (family.type, family.samples)
        for family in text_string_to_metric_families(response.text)
    }


def value(scraped: dict[str, tuple[str, list[Sample]]], sample: str, **labels: str) -> float:
    """The sample's value (0 when absent): `sample` as written, e.g. ..._total or ..._count."""
    return sum(
        found.value
        for _type, samples in scraped.values()
        for found in samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


async def funded(client: httpx.AsyncClient, running_mesh: RunningMesh, credits: int) -> str:
    account_id, token = await sign_up(client)
    data_dir = str(running_mesh.mesh.settings.data_dir)
    grant = ["admin", "grant-credits", account_id, str(credits), "--data-dir", data_dir]
    await asyncio.to_thread(cli.main, grant)
    return token


async def test_one_job_adds_what_it_did(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = {"Authorization": f"Bearer {await funded(client, running_mesh, 20)}"}
    before = await scrape(client)
    response = await client.post("/v1/jobs", json=SMALL, headers={**auth, "Prefer": "wait=30"})
    job = response.json()
    assert job["status"] == "completed", job
    content = await client.get(job["result"]["url"])
    assert content.status_code == 200
    after: dict[str, tuple[str, list[Sample]]] = {}

    async def settled() -> bool:  # the hold is captured just after the job completes
        after.update(await scrape(client))
        captured = value(after, "magicpixels_credits_captured_total", service="billing")
        return captured - value(before, "magicpixels_credits_captured_total") == job["cost_credits"]

    await eventually(settled)

    for name, kind in TYPES.items():
        assert after[name][0] == kind, name

    def added(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    mode = {"mode": "text_to_image"}
    assert added("magicpixels_jobs_created_total", service="jobs", **mode) == 1
    assert added("magicpixels_jobs_ended_total", service="jobs", outcome="completed", **mode) == 1
    assert added("magicpixels_job_create_to_lease_seconds_count", service="jobs", **mode) == 1
    create = {"service": "gateway", "route": "/v1/jobs", "method": "POST"}
    assert added("magicpixels_http_requests_total", status_class="2xx", **create) == 1
    assert added("magicpixels_http_request_duration_seconds_count", **create) == 1
    ok = {"grpc_code": "OK"}
    assert (
        added("magicpixels_grpc_server_handled_total", service="jobs", grpc_method=CREATE_JOB, **ok)
        == 1
    )
    assert (
        added(
            "magicpixels_grpc_client_handled_total", service="gateway", grpc_method=CREATE_JOB, **ok
        )
        == 1
    )
    assert (
        added("magicpixels_grpc_server_handled_total", service="billing", grpc_method=RESERVE, **ok)
        == 1
    )
    assert (
        added("magicpixels_grpc_client_handled_total", service="jobs", grpc_method=RESERVE, **ok)
        == 1
    )
    assert (
        added(
            "magicpixels_grpc_server_handling_seconds_count", service="jobs", grpc_method=CREATE_JOB
        )
        == 1
    )
    # Streaming calls, counted when they end: the worker's upload, the gateway's download.
    upload = {"grpc_method": "/magicpixels.assets.v1.AssetsService/UploadAsset", **ok}
    assert added("magicpixels_grpc_client_handled_total", service="inference", **upload) == 1
    read = {"grpc_method": "/magicpixels.assets.v1.AssetsService/ReadAsset", **ok}
    assert added("magicpixels_grpc_client_handled_total", service="gateway", **read) == 1
    generated = added("magicpixels_upload_bytes_total", service="assets", origin="generated")
    assert generated == len(content.content)
    lookups = added("magicpixels_api_key_cache_lookups_total", service="gateway")
    assert lookups == 1  # the create's key (a signed URL needs none)


@pytest.mark.without_workers
async def test_a_hundred_jobs_add_no_series(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = {"Authorization": f"Bearer {await funded(client, running_mesh, 1000)}"}

    async def one_job(number: int) -> None:
        body = {**SMALL, "prompt": f"a lighthouse, take {number}", "metadata": {"n": str(number)}}
        headers = {**auth, "Idempotency-Key": f"key-{number}"}
        created = await client.post("/v1/jobs", json=body, headers=headers)
        assert created.status_code == 201, created.text
        found = await client.get(f"/v1/jobs/{created.json()['id']}", headers=auth)
        assert found.status_code == 200

    await one_job(0)  # every series these requests make exists from now on
    await scrape(client)  # and a scrape's own
    series = {
        (s.name, tuple(sorted(s.labels.items())))
        for _, ss in (await scrape(client)).values()
        for s in ss
    }
    for number in range(1, 101):
        await one_job(number)
    after = await scrape(client)
    assert {
        (s.name, tuple(sorted(s.labels.items()))) for _, ss in after.values() for s in ss
    } == series
    assert value(after, "magicpixels_jobs_created_total", mode="text_to_image") >= 101

    async def counted() -> bool:  # the reconciler measures the queue every pass
        queued = value(await scrape(client), "magicpixels_queue_depth", mode="text_to_image")
        return queued == 101

    await eventually(counted)


def test_a_serve_process_answers_on_its_metrics_port() -> None:
    server = serve_metrics("127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"magicpixels_grpc_server_handled", "magicpixels_jobs_created"} <= names
