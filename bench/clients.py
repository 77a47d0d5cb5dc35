"""What the clients cost: a job followed by the SDK's long poll against a 5 ms busy poll, and a
read through MCP (whose tools call the REST API again) against the same read through the SDK.

Runs the whole mesh in this process on a fresh data folder (SQLite, the built-in backend),
signs up, grants credits, then for N rounds: a 64x64 text_to_image job followed (a) by
`jobs.wait` (GET ?wait=, answered when the status changes) and (b) by GET every 5 ms, counting
requests; and N reads of one job by `jobs.get` and by the MCP `get_job` tool. Prints medians.

    .venv/bin/python bench/clients.py [--rounds 20]
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import eventloop
from magicpixels.core.settings import GatewaySettings, MeshSettings
from magicpixels.mesh import start_mesh
from magicpixels_sdk import AsyncMagicPixels

SMALL = {"width": 64, "height": 64}


async def busy_polled(http: httpx.AsyncClient) -> tuple[float, int]:
    started = time.perf_counter()
    job = await http.post("/v1/jobs", json={"mode": "text_to_image", "prompt": "x", **SMALL})
    job_json, requests = job.json(), 1
    while job_json["status"] not in ("completed", "failed", "canceled"):
        await asyncio.sleep(0.005)
        job_json = (await http.get(f"/v1/jobs/{job_json['id']}")).json()
        requests += 1
    return time.perf_counter() - started, requests


async def long_polled(sdk: AsyncMagicPixels, http: httpx.AsyncClient) -> tuple[float, int]:
    counted = {"requests": 0}

    async def count(_request: httpx.Request) -> None:
        counted["requests"] += 1

    http.event_hooks["request"] = [count]
    started = time.perf_counter()
    job = await sdk.jobs.create("text_to_image", "x", **SMALL)
    await sdk.jobs.wait(job, timeout=60)
    http.event_hooks["request"] = []
    return time.perf_counter() - started, counted["requests"]


async def bench(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = MeshSettings(data_dir=Path(folder))
        running = await start_mesh(settings, GatewaySettings(port=0))
        try:
            assert running.gateway is not None
            base_url = running.gateway.settings.base_url()
            async with httpx.AsyncClient(base_url=base_url) as anonymous:
                signed = (await anonymous.post("/v1/accounts", json={"email": "b@x.io"})).json()
            billing = billing_pb2_grpc.BillingServiceStub(running.mesh.channel("billing"))
            await billing.Grant(
                billing_pb2.GrantRequest(account_id=signed["account"]["id"], amount=10 * rounds)
            )
            auth = {"Authorization": f"Bearer {signed['api_key']['token']}"}
            await measure(rounds, base_url, auth)
        finally:
            await running.stop()


async def measure(rounds: int, base_url: str, auth: dict[str, str]) -> None:
    token = auth["Authorization"].removeprefix("Bearer ")
    async with (
        httpx.AsyncClient(base_url=base_url, headers=auth) as raw,
        httpx.AsyncClient() as traced,
        AsyncMagicPixels(token, base_url=base_url, http_client=traced) as sdk,
    ):
        polled = [await busy_polled(raw) for _ in range(rounds)]
        waited = [await long_polled(sdk, traced) for _ in range(rounds)]
        report("job, 5 ms busy poll", polled)
        report("job, SDK long poll ", waited)
        job = await sdk.jobs.create("text_to_image", "x", **SMALL)
        reads = []
        for _ in range(rounds):
            started = time.perf_counter()
            await sdk.jobs.get(job.id)
            reads.append(time.perf_counter() - started)
        http2 = httpx2.AsyncClient(headers=auth, timeout=60)
        transport = streamable_http_client(f"{base_url}/mcp", http_client=http2)
        async with http2, Client(transport) as agent:
            tool_reads = []
            for _ in range(rounds):
                started = time.perf_counter()
                await agent.call_tool("get_job", {"job_id": job.id})
                tool_reads.append(time.perf_counter() - started)
    print(f"read a job, SDK          median {statistics.median(reads) * 1000:7.2f} ms")
    print(f"read a job, MCP get_job  median {statistics.median(tool_reads) * 1000:7.2f} ms")


def report(name: str, runs: list[tuple[float, int]]) -> None:
    seconds = statistics.median(run[0] for run in runs) * 1000
    requests = statistics.median(run[1] for run in runs)
    print(f"{name}  median {seconds:7.2f} ms, {requests:g} requests per job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    eventloop.run(bench(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
