"""Faults with every service in its own process, configured only by environment as a pod is:
a worker killed mid-job, the jobs service restarted with work in flight. The invariants: no
job is lost, none completes twice, each is charged exactly once, no hold is left behind."""

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.processes import completions, free_port, magicpixels, stop, wait_for
from tests.support import REDIS_URL, Database

STORES = ("auth", "billing", "assets", "jobs")


class Cluster:
    """The services as separate processes on one data folder (and one database server)."""

    def __init__(self, stack: ExitStack, tmp_path: Path, database: Database) -> None:
        self.stack = stack
        self.data_dir = tmp_path / "cluster"
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.database = database
        self.gateway_port = free_port()
        self.env = {
            "MP_GATEWAY_PORT": str(self.gateway_port),
            # Fixed, so a restarted jobs service is found where its clients left it.
            "MP_JOBS_PORT": str(free_port()),
            "MP_JOBS_LEASE_SECONDS": "2",
            "MP_JOBS_RECONCILE_INTERVAL_SECONDS": "0.2",
            "MP_INFERENCE_LEASE_WAIT_SECONDS": "2",
            "MP_GRACE_SECONDS": "1",
        }
        if database.schema:  # PostgreSQL, and Redis carrying the bus between processes
            self.env["MP_REDIS_URL"] = REDIS_URL
            for name in STORES:
                prefix = f"MP_{name.upper()}_DATABASE"
                self.env |= {f"{prefix}_URL": database.url, f"{prefix}_SCHEMA": self.schema(name)}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.gateway_port}", timeout=30)
        stack.callback(self.http.close)

    def schema(self, service: str) -> str:
        return f"{self.database.schema}_{service}"

    def start(self, service: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{service}.log"
        process = self.stack.enter_context(
            magicpixels("serve", service, data_dir=self.data_dir, env=self.env, log=log)
        )
        address = self.data_dir / "run" / f"{service}.address"

        def started() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{service} exited:\n{log.read_text()[-3000:]}")
            return self._answers() if service == "gateway" else address.exists()

        wait_for(started, f"the {service} service")
        return process

    def _answers(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def account(self, credits: int) -> dict[str, str]:
        """A new account with credits: its key's Authorization header."""
        signup = self.http.post("/v1/accounts", json={"email": "ops@example.com"}).json()
        account_id = signup["account"]["id"]
        granted = subprocess.run(
            [
                sys.executable,
                "-m",
                "magicpixels.cli",
                "admin",
                "grant-credits",
                account_id,
                str(credits),
            ],
            env={**os.environ, "MP_DATA_DIR": str(self.data_dir), **self.env},
            capture_output=True,
            check=False,
        )
        assert granted.returncode == 0, granted.stderr
        return {"Authorization": f"Bearer {signup['api_key']['token']}"}

    def job(self, job_id: str, auth: dict[str, str]) -> dict[str, Any]:
        return self.http.get(f"/v1/jobs/{job_id}", headers=auth).json()

    def credits(self, auth: dict[str, str]) -> dict[str, int]:
        return self.http.get("/v1/account", headers=auth).json()["credits"]

    def completions(self) -> dict[str, int]:
        """How many times each job reached `completed`, from the jobs service's event log."""
        url = (
            self.database.url
            if self.database.schema
            else f"sqlite+aiosqlite:///{self.data_dir / 'jobs.db'}"
        )
        return asyncio.run(completions(url, self.schema("jobs") if self.database.schema else None))


@pytest.fixture
def cluster(tmp_path: Path, database: Database) -> Iterator[Cluster]:
    with ExitStack() as stack:
        yield Cluster(stack, tmp_path, database)


def create(cluster: Cluster, auth: dict[str, str], size: int) -> str:
    body = {
        "mode": "text_to_image",
        "prompt": "a slow, detailed harbour",
        "width": size,
        "height": size,
    }
    response = cluster.http.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_worker_killed_mid_job_leaves_it_to_another_and_it_is_charged_once(
    cluster: Cluster,
) -> None:
    for service in (*STORES, "gateway"):
        cluster.start(service)
    auth = cluster.account(credits=5)
    job_id = create(cluster, auth, size=2048)
    first_worker = cluster.start("inference")
    wait_for(
        lambda: cluster.job(job_id, auth).get("status") == "running", "the first worker's lease"
    )
    first_worker.send_signal(signal.SIGKILL)
    first_worker.wait()
    cluster.start("inference")

    wait_for(lambda: cluster.job(job_id, auth).get("status") == "completed", "the second worker")

    job = cluster.job(job_id, auth)
    assert job["attempts"] == 2
    image = Image.open(io.BytesIO(cluster.http.get(job["result"]["url"]).content))
    assert image.size == (2048, 2048)
    wait_for(lambda: cluster.credits(auth) == {"available": 4, "reserved": 0}, "the capture")
    assert cluster.completions() == {job_id: 1}


def test_jobs_restarted_with_work_in_flight_loses_and_repeats_nothing(cluster: Cluster) -> None:
    processes = {service: cluster.start(service) for service in (*STORES, "gateway")}
    auth = cluster.account(credits=10)
    job_ids = [create(cluster, auth, size=512) for _ in range(6)]
    cluster.start("inference")
    wait_for(
        lambda: any(cluster.job(job_id, auth).get("status") != "queued" for job_id in job_ids),
        "a first lease",
    )

    assert stop(processes["jobs"]) == 0
    cluster.start("jobs")
    wait_for(
        lambda: all(cluster.job(job_id, auth).get("status") == "completed" for job_id in job_ids),
        "every job to complete",
    )

    wait_for(lambda: cluster.credits(auth) == {"available": 4, "reserved": 0}, "the captures")
    assert cluster.completions() == dict.fromkeys(job_ids, 1)


def test_deadlines_outlive_a_killed_jobs_service(cluster: Cluster) -> None:
    processes = {service: cluster.start(service) for service in (*STORES, "gateway")}
    auth = cluster.account(credits=3)
    body = {"mode": "text_to_image", "prompt": "a harbour", "deadline_seconds": 5}
    job_ids = [
        cluster.http.post("/v1/jobs", json=body, headers=auth).json()["id"] for _ in range(2)
    ]
    assert cluster.credits(auth) == {"available": 1, "reserved": 2}
    # Killed before the deadlines: only the next jobs process can fire them.
    assert {cluster.job(job_id, auth)["status"] for job_id in job_ids} == {"queued"}

    processes["jobs"].send_signal(signal.SIGKILL)
    processes["jobs"].wait()
    cluster.start("jobs")
    wait_for(
        lambda: all(cluster.job(job_id, auth).get("status") == "canceled" for job_id in job_ids),
        "the deadlines",
    )

    assert {cluster.job(job_id, auth)["error"]["code"] for job_id in job_ids} == {
        "deadline_exceeded"
    }
    wait_for(lambda: cluster.credits(auth) == {"available": 3, "reserved": 0}, "the releases")
