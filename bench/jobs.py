"""Jobs: create -> lease latency, and HTTP throughput against the bare Starlette baseline.

    .venv/bin/python bench/jobs.py latency [--jobs 200] [--postgres]
    .venv/bin/python bench/jobs.py http [--seconds 10]

`latency` runs billing and jobs in this process and times, job after job, from the start of
CreateJob to a waiting LeaseJob answering with it (p50, p99), and prints this process's CPU
time per job (every thread's; not the database server's), which a busy machine moves far less
than it moves the latency. `http` serves the baseline app
of ../shared/bench (bare_starlette.py) and then the mesh's gateway (every service but
inference, in one process, so jobs stay queued), each pinned to CPU 0 with wrk on CPU 1, and
prints POST /v1/jobs and GET /v1/jobs/{id} requests per second and the ratios (median of 3
runs after a 2 s warm-up). Both servers run on uvloop, as the mesh's processes do
(core/eventloop.py) and as ../shared/bench/README.md serves the baseline.

Beside each figure it prints the server's CPU time per request (its process's user + system
time over the run, every thread included, divided by the requests served) and the ratio of
those: on a machine that other work keeps busy, throughput falls with the CPU share the server
gets, while its CPU cost per request moves far less.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT.parent / "shared" / "bench"
BODY = {"mode": "text_to_image", "prompt": "Editorial product photo on brushed steel"}
POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def latency(jobs: int, postgres: bool) -> None:
    from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
    from magicpixels.core.logging import configure_logging
    from magicpixels.core.settings import BillingSettings, JobsSettings, MeshSettings
    from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
    from magicpixels.mesh import settle_heap, start_mesh

    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as folder:
        settings = {}
        if postgres:
            schema = f"bench_{os.getpid()}"
            settings = {
                "billing": BillingSettings(
                    database_url=POSTGRES_URL, database_schema=f"{schema}_b"
                ),
                "jobs": JobsSettings(database_url=POSTGRES_URL, database_schema=f"{schema}_j"),
            }
        running = await start_mesh(
            MeshSettings(data_dir=Path(folder)), None, ("billing", "jobs"), settings
        )
        settle_heap()  # as a mesh's process does once started (run_until_stopped)
        try:
            billing = billing_pb2_grpc.BillingServiceStub(running.mesh.channel("billing"))
            await billing.Grant(billing_pb2.GrantRequest(account_id="acct_bench", amount=jobs + 10))
            stub = jobs_pb2_grpc.JobsServiceStub(running.mesh.channel("jobs"))
            spec = jobs_pb2.JobSpec(mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, prompt="p")
            create = jobs_pb2.CreateJobRequest(account_id="acct_bench", livemode=True, spec=spec)
            lease = jobs_pb2.LeaseJobRequest(worker_id="bench", modes=[spec.mode])
            lease.wait.FromSeconds(10)
            samples = []
            cpu_started = 0.0
            for made in range(jobs + 10):
                if made == 10:  # after the warm-up
                    cpu_started = time.process_time()
                waiting = asyncio.ensure_future(stub.LeaseJob(lease, timeout=20))
                await asyncio.sleep(0.002)  # the worker is waiting before the job exists
                started = time.perf_counter()
                await stub.CreateJob(create)
                await waiting
                samples.append((time.perf_counter() - started) * 1000)
            cpu_ms = (time.process_time() - cpu_started) * 1000 / jobs
        finally:
            await running.stop()
            if postgres:
                await _drop_schemas(f"bench_{os.getpid()}")
    ms = sorted(samples[10:])
    where = "PostgreSQL" if postgres else "SQLite"
    print(
        f"create -> lease on {where} over {jobs} jobs: p50 {statistics.median(ms):.2f} ms, "
        f"p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms; CPU {cpu_ms:.2f} ms per job"
    )


async def _drop_schemas(prefix: str) -> None:
    import asyncpg

    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        for suffix in ("b", "j"):
            await connection.execute(f'DROP SCHEMA IF EXISTS "{prefix}_{suffix}" CASCADE')
    finally:
        await connection.close()


def serve_mesh(port: int, data_dir: str) -> None:
    """The mesh without inference, until SIGTERM (run pinned by `http`)."""
    from magicpixels.core import eventloop
    from magicpixels.core.logging import configure_logging
    from magicpixels.core.settings import SERVICES, GatewaySettings, MeshSettings
    from magicpixels.mesh import run_until_stopped, start_mesh

    configure_logging("warning", "json")

    async def run() -> None:
        services = tuple(name for name in SERVICES if name != "inference")
        # The bench measures the API's cost, not its per-key rate limit.
        gateway = GatewaySettings(port=port, rate_limit_per_key=1_000_000)
        running = await start_mesh(MeshSettings(data_dir=Path(data_dir)), gateway, services)
        await run_until_stopped(running)

    eventloop.run(run())


@dataclass(frozen=True)
class Load:
    """What one wrk run got from a server: requests per second, and the server's CPU
    microseconds per request."""

    per_second: float
    cpu_us: float


def cpu_seconds(pid: int) -> float:
    """The user + system time of a process so far, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, script: Path | None, server: int) -> Load:
    command = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency"]
    if script:
        command += ["-s", str(script)]
    cpu_before = cpu_seconds(server)
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(server) - cpu_before
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    served = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if found is None or served is None or errors:
        raise SystemExit(f"wrk failed or saw errors:\n{output}")
    return Load(float(found.group(1)), cpu * 1e6 / max(int(served.group(1)), 1))


def wait_listening(url: str) -> None:
    for _ in range(600):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


def post_script(folder: Path, token: str) -> Path:
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
    )
    return script


def get_script(folder: Path, token: str) -> Path:
    script = folder / "get.lua"
    script.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    return script


def measure(url: str, seconds: int, script: Path, server: int) -> Load:
    wrk(url, 2, script, server)  # warm-up
    runs = [wrk(url, seconds, script, server) for _ in range(3)]
    return Load(
        statistics.median(run.per_second for run in runs),
        statistics.median(run.cpu_us for run in runs),
    )


def http(seconds: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        baseline = _pinned(baseline_command(18080))
        try:
            wait_listening("http://127.0.0.1:18080/v1/jobs/seed")
            post = measure(
                "http://127.0.0.1:18080/v1/jobs",
                seconds,
                post_script(folder, "tok-anchor"),
                baseline.pid,
            )
            get = measure(
                "http://127.0.0.1:18080/v1/jobs/seed",
                seconds,
                get_script(folder, "tok-anchor"),
                baseline.pid,
            )
        finally:
            _stop(baseline)
        mesh = _pinned(
            [sys.executable, __file__, "serve-mesh", "--port", "18081", "--data-dir", name]
        )
        try:
            wait_listening("http://127.0.0.1:18081/healthz")
            token, job_id = _account(folder, name)
            mesh_post = measure(
                "http://127.0.0.1:18081/v1/jobs", seconds, post_script(folder, token), mesh.pid
            )
            mesh_get = measure(
                f"http://127.0.0.1:18081/v1/jobs/{job_id}",
                seconds,
                get_script(folder, token),
                mesh.pid,
            )
        finally:
            _stop(mesh)
    _report("POST /v1/jobs", post, mesh_post)
    _report("GET /v1/jobs/{id}", get, mesh_get)


def baseline_command(port: int) -> list[str]:
    """The bare Starlette app of ../shared/bench, served as its README serves it."""
    app = ["bare_starlette:app", "--app-dir", str(BASELINE), "--port", str(port)]
    served = ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    return [sys.executable, "-m", "uvicorn", *app, *served]


def _report(route: str, bare: Load, mesh: Load) -> None:
    print(
        f"{route}: bare {bare.per_second:,.0f} req/s, mesh {mesh.per_second:,.0f} req/s"
        f" = {mesh.per_second / bare.per_second:.1%}; CPU per request: bare {bare.cpu_us:,.0f}"
        f" us, mesh {mesh.cpu_us:,.0f} us = {bare.cpu_us / mesh.cpu_us:.1%}"
    )


def _pinned(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", "0", *command], stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def _account(folder: Path, data_dir: str) -> tuple[str, str]:
    with httpx.Client(base_url="http://127.0.0.1:18081", timeout=30) as client:
        signup = client.post("/v1/accounts", json={"email": "bench@example.com"}).json()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "magicpixels.cli",
                "admin",
                "grant-credits",
                signup["account"]["id"],
                "100000000",
                "--data-dir",
                data_dir,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        token = signup["api_key"]["token"]
        job = client.post(
            "/v1/jobs", json=BODY, headers={"Authorization": f"Bearer {token}"}
        ).json()
    return token, job["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    latency_command = commands.add_parser("latency")
    latency_command.add_argument("--jobs", type=int, default=200)
    latency_command.add_argument("--postgres", action="store_true")
    http_command = commands.add_parser("http")
    http_command.add_argument("--seconds", type=int, default=10)
    serve = commands.add_parser("serve-mesh")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    if args.command == "latency":
        from magicpixels.core import eventloop

        eventloop.run(latency(args.jobs, args.postgres))
    elif args.command == "http":
        http(args.seconds)
    else:
        serve_mesh(args.port, args.data_dir)


if __name__ == "__main__":
    main()
