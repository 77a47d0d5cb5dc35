"""Time from POST /v1/jobs to `completed`, and each service's idle memory.

Runs every service as its own process (`magicpixels serve <svc>`) on a fresh data folder, signs
up, grants credits with the operator command, then runs N text_to_image jobs one after another
(the API.md example), polling GET /v1/jobs/{id} every 5 ms. Prints the idle RSS of each process
and the median / p90 / max latency.

    .venv/bin/python bench/job_latency.py [--jobs 20]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVICES = ("auth", "billing", "assets", "jobs", "inference")
BODY = {"mode": "text_to_image", "prompt": "Editorial product photo on brushed steel"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(pid)


def start(service: str, env: dict[str, str], data_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "magicpixels.cli", "serve", service]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    marker = data_dir / "run" / f"{service}.address"
    for _ in range(300):
        if service == "gateway" or marker.exists():
            return process
        if process.poll() is not None:
            raise SystemExit(f"{service} exited with {process.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"{service} did not start")


def run_job(client: httpx.Client, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    job = client.post("/v1/jobs", json=BODY, headers=headers).raise_for_status().json()
    while job["status"] not in ("completed", "failed", "canceled"):
        time.sleep(0.005)
        job = client.get(f"/v1/jobs/{job['id']}", headers=headers).raise_for_status().json()
    if job["status"] != "completed":
        raise SystemExit(f"job ended {job['status']}: {job['error']}")
    return time.perf_counter() - started


def wait_ready(client: httpx.Client) -> None:
    for _ in range(300):
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit("the gateway never became ready")


@dataclass(frozen=True)
class ServedMesh:
    client: httpx.Client
    processes: dict[str, subprocess.Popen[bytes]]
    data_dir: Path
    env: dict[str, str]


@contextmanager
def serve_mesh(timeout: float) -> Iterator[ServedMesh]:
    """Every service and the gateway, each its own process, on a fresh data folder; yields
    once the gateway is ready, with an HTTP client for it."""
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        port = free_port()
        env = {
            **os.environ,
            "MP_DATA_DIR": str(data_dir),
            "MP_GATEWAY_PORT": str(port),
            "MP_LOG_LEVEL": "warning",
        }
        processes = {name: start(name, env, data_dir) for name in (*SERVICES, "gateway")}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
                wait_ready(client)
                yield ServedMesh(client, processes, data_dir, env)
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    with serve_mesh(timeout=30) as served:
        client = served.client
        time.sleep(2)  # let start-up garbage settle before reading idle memory
        for name, process in served.processes.items():
            print(f"idle RSS {name:<10} {rss_mib(process.pid):6.1f} MiB")
        signup = client.post("/v1/accounts", json={"email": "bench@example.com"}).json()
        account, token = signup["account"]["id"], signup["api_key"]["token"]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "magicpixels.cli",
                "admin",
                "grant-credits",
                account,
                str(args.jobs + 1),
                "--data-dir",
                str(served.data_dir),
            ],
            check=True,
            env=served.env,
            stdout=subprocess.DEVNULL,
        )
        headers = {"Authorization": f"Bearer {token}"}
        run_job(client, headers)  # warm-up
        latencies = sorted(run_job(client, headers) for _ in range(args.jobs))
    ms = [value * 1000 for value in latencies]
    print(
        f"POST /v1/jobs -> completed over {args.jobs} jobs: median {statistics.median(ms):.0f} ms, "
        f"p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, max {ms[-1]:.0f} ms"
    )


if __name__ == "__main__":
    main()
