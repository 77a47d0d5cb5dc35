"""`magicpixels up --processes` end to end: every service its own OS process, configured by
environment as a pod is, on PostgreSQL (a schema per service), Redis and an S3 store (moto's
server), driven over HTTP as a client would. A process killed outright is started again by
the supervisor, and no job or credit is lost."""

import asyncio
import io
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from PIL import Image
from sqlalchemy.engine import make_url

from magicpixels.core.settings import DATABASE_SERVICES, SERVICES, GatewaySettings, MeshSettings
from magicpixels.processes import PROCESSES, topology
from tests.assets.stores import s3_client, store_under_test
from tests.processes import completions, free_port, magicpixels, stop, wait_for
from tests.support import POSTGRES_URL, REDIS_URL

# Six Python processes start, and start again, on a machine the other tests share.
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

STORES = DATABASE_SERVICES
API_EXAMPLE = {"mode": "text_to_image", "prompt": "Editorial product photo on brushed steel"}


class Topology:
    """A running `magicpixels up --processes`, its HTTP client and its PostgreSQL schemas."""

    def __init__(self, stack: ExitStack, tmp_path: Path, s3_endpoint: str) -> None:
        self.stack = stack
        self.prefix = f"test_{secrets.token_hex(6)}"
        self.bucket = store_under_test("s3", tmp_path / "unused", s3_endpoint).bucket
        self.s3_endpoint = s3_endpoint
        self.data_dir = tmp_path / "data"
        self.log = tmp_path / "up.log"
        self.port = free_port()
        self.env = {
            "MP_REDIS_URL": REDIS_URL,
            "MP_ASSETS_BLOB_STORE": "s3",
            "MP_ASSETS_S3_BUCKET": self.bucket,
            "MP_ASSETS_S3_ENDPOINT_URL": s3_endpoint,
            "MP_ASSETS_S3_REGION": "us-east-1",
            "MP_ASSETS_S3_ACCESS_KEY_ID": "test-key",
            "MP_ASSETS_S3_SECRET_ACCESS_KEY": "test-secret",
            # A killed worker's job goes back to the queue soon, not after the default 30 s.
            "MP_JOBS_LEASE_SECONDS": "2",
            "MP_JOBS_RECONCILE_INTERVAL_SECONDS": "0.2",
            "MP_INFERENCE_LEASE_WAIT_SECONDS": "2",
            "MP_GRACE_SECONDS": "1",
            # This test's own schemas in the shared test database; --database-url does the rest.
            **{f"MP_{name.upper()}_DATABASE_SCHEMA": self.schema(name) for name in STORES},
        }
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def schema(self, service: str) -> str:
        return f"{self.prefix}_{service}"

    def up(self) -> "subprocess.Popen[bytes]":
        """Starts the topology; the test's end kills it if the test did not stop it."""
        arguments = ("--processes", "--port", str(self.port), "--database-url", POSTGRES_URL)
        supervisor = self.stack.enter_context(
            magicpixels("up", *arguments, data_dir=self.data_dir, env=self.env, log=self.log)
        )
        # A test that failed half way stops it as an operator would: killed outright, its
        # processes would outlive it.
        self.stack.callback(_stopped, supervisor)
        return supervisor

    def wait_until_ready(self, supervisor: "subprocess.Popen[bytes]") -> None:
        def announced() -> bool:
            if supervisor.poll() is not None:
                raise AssertionError(f"up --processes exited:\n{self.output()[-3000:]}")
            return "processes ready in" in self.output()

        wait_for(announced, "every process to serve", seconds=120)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def account(self, credits: int) -> dict[str, str]:
        """A new account with credits granted by the operator command: its key's header."""
        signup = self.http.post("/v1/accounts", json={"email": "ops@example.com"})
        assert signup.status_code == 201, signup.text
        account_id = signup.json()["account"]["id"]
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
            env={**os.environ, "MP_DATA_DIR": str(self.data_dir)},
            capture_output=True,
            check=False,
        )
        assert granted.returncode == 0, granted.stderr
        return {"Authorization": f"Bearer {signup.json()['api_key']['token']}"}

    def create(self, body: dict[str, Any], auth: dict[str, str]) -> str:
        """Creates a job as a careful client does: a 503 (a peer still reconnecting to one
        that restarted) is asked again with the same Idempotency-Key, so it is made once; so is
        a 409 saying the first attempt is still in progress (its create is being finished)."""
        headers = {**auth, "Idempotency-Key": secrets.token_hex(16)}
        responses: list[httpx.Response] = []

        def answered() -> bool:
            response = self.http.post("/v1/jobs", json=body, headers=headers)
            responses.append(response)
            in_progress = response.status_code == 409 and (
                response.json()["error"]["code"] == "idempotency_key_in_use"
            )
            return response.status_code != 503 and not in_progress

        wait_for(answered, "an answer other than 503")
        assert responses[-1].status_code == 201, responses[-1].text
        return str(responses[-1].json()["id"])

    def job(self, job_id: str, auth: dict[str, str]) -> dict[str, Any]:
        try:
            response = self.http.get(f"/v1/jobs/{job_id}", headers=auth)
        except httpx.TransportError:  # the gateway is being restarted
            return {}
        return response.json() if response.status_code == 200 else {}

    def credits(self, auth: dict[str, str]) -> dict[str, int]:
        return self.http.get("/v1/account", headers=auth).json()["credits"]

    def objects(self) -> list[str]:
        listed = s3_client(self.s3_endpoint).list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listed.get("Contents", [])]

    def completions(self) -> dict[str, int]:
        """How many times each job reached `completed`, from the jobs service's event log."""
        return asyncio.run(completions(POSTGRES_URL, self.schema("jobs")))

    def drop_schemas(self) -> None:
        asyncio.run(_drop_schemas([self.schema(name) for name in DATABASE_SERVICES]))


async def _drop_schemas(schemas: list[str]) -> None:
    dsn = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
def mesh(tmp_path: Path, s3_endpoint: str) -> Iterator[Topology]:
    with ExitStack() as stack:
        running = Topology(stack, tmp_path, s3_endpoint)
        stack.callback(running.drop_schemas)  # last: once every process is gone
        stack.callback(running.http.close)
        yield running


def processes_of(supervisor: int) -> dict[str, int]:
    """The supervisor's `magicpixels serve` children, by service: their pids."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    found = {}
    for pid in children:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:  # exited just now
            continue
        if b"serve" in command:
            found[command[command.index(b"serve") + 1].decode()] = int(pid)
    return found


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_every_mode_runs_to_a_downloadable_result_then_everything_stops(mesh: Topology) -> None:
    supervisor = mesh.up()
    mesh.wait_until_ready(supervisor)
    assert sorted(processes_of(supervisor.pid)) == sorted(PROCESSES)
    auth = mesh.account(credits=100)
    upload = mesh.http.post(
        "/v1/assets", content=png(64, 64), headers={**auth, "Content-Type": "image/png"}
    )
    assert upload.status_code == 201, upload.text
    image_id = upload.json()["id"]
    bodies = [
        API_EXAMPLE,
        {"mode": "image_to_image", "prompt": "in oils", "input_asset_id": image_id},
        {"mode": "text_to_audio", "prompt": "rain on a tin roof", "duration_seconds": 2},
        {"mode": "image_to_video", "input_asset_id": image_id, "duration_seconds": 1, "fps": 8},
    ]
    job_ids = [mesh.create(body, auth) for body in bodies]
    wait_for(
        lambda: all(mesh.job(job_id, auth).get("status") == "completed" for job_id in job_ids),
        "a job of every mode to complete",
        seconds=120,
    )

    downloads = [mesh.http.get(mesh.job(job_id, auth)["result"]["url"]) for job_id in job_ids]
    assert [download.status_code for download in downloads] == [200] * 4  # signed: no key
    content_types = [download.headers["content-type"] for download in downloads]
    assert content_types == ["image/png", "image/png", "audio/wav", "video/mp4"]
    sizes = [Image.open(io.BytesIO(download.content)).size for download in downloads[:2]]
    assert sizes == [(1024, 1024), (64, 64)]  # the API example's default; the input's size
    assert len(mesh.objects()) == 1 + len(job_ids)  # the upload and each result, in S3
    # 1 + 1 + ceil(2 / 10) + 22 * 1 credits captured, none left held.
    wait_for(lambda: mesh.credits(auth) == {"available": 75, "reserved": 0}, "the captures")
    children = processes_of(supervisor.pid)

    assert stop(supervisor) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children.values())
    assert "Traceback" not in mesh.output()


def test_any_process_killed_is_restarted_and_loses_no_job_and_no_credit(mesh: Topology) -> None:
    supervisor = mesh.up()
    mesh.wait_until_ready(supervisor)
    auth = mesh.account(credits=20)
    small = {"mode": "text_to_image", "prompt": "a harbour at dusk", "width": 256, "height": 256}
    job_ids = [mesh.create(small, auth) for _ in range(3)]
    for service in PROCESSES:
        killed = processes_of(supervisor.pid)[service]
        os.kill(killed, signal.SIGKILL)
        wait_for(
            lambda killed=killed, service=service: (
                processes_of(supervisor.pid).get(service) not in (None, killed)
            ),
            f"the {service} process to be started again",
        )
        wait_for(lambda: _ready(mesh), f"every service to serve after {service}")
        job_ids.append(mesh.create(small, auth))

    wait_for(
        lambda: all(mesh.job(job_id, auth).get("status") == "completed" for job_id in job_ids),
        "every job to complete",
        seconds=120,
    )
    spent = len(job_ids)
    wait_for(lambda: mesh.credits(auth) == {"available": 20 - spent, "reserved": 0}, "captures")
    assert mesh.completions() == dict.fromkeys(job_ids, 1)
    assert stop(supervisor) == 0


def _stopped(supervisor: "subprocess.Popen[bytes]") -> None:
    if supervisor.poll() is None:
        stop(supervisor)


def _ready(mesh: Topology) -> bool:
    try:
        return mesh.http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_the_topology_gives_each_process_a_pod_like_environment(tmp_path: Path) -> None:
    mesh_settings = MeshSettings(data_dir=tmp_path)
    gateway = GatewaySettings(port=8123)
    url = "postgresql+asyncpg://mp@db/mp"

    environments = topology(mesh_settings, gateway, {"MP_AUTH_PORT": "7001"}, url)

    assert sorted(environments) == sorted(PROCESSES)
    jobs = environments["jobs"]
    assert jobs["MP_AUTH_ADDRESS"] == "127.0.0.1:7001"
    assert jobs["MP_GATEWAY_PORT"] == "8123"
    # Metrics on ports the services bind themselves: none picked here, to be taken meanwhile.
    assert {environments[name]["MP_METRICS_PORT"] for name in SERVICES} == {"0"}
    for name in DATABASE_SERVICES:  # one database, a schema per service
        assert environments[name][f"MP_{name.upper()}_DATABASE_URL"] == url
        assert environments[name][f"MP_{name.upper()}_DATABASE_SCHEMA"] == name
    # Each process gets the token; only its owner a service's own secret.
    tokens = {env["MP_SERVICE_TOKEN"] for env in environments.values()}
    assert len(tokens) == 1
    assert "MP_AUTH_PEPPER" in environments["auth"]
    assert "MP_AUTH_PEPPER" not in environments["gateway"]
    assert "MP_ASSETS_URL_SIGNING_KEY" not in environments["jobs"]
    # Generated once into the data folder: a second start hands out the same secrets.
    again = topology(mesh_settings, gateway, {}, None)
    assert again["auth"]["MP_AUTH_PEPPER"] == environments["auth"]["MP_AUTH_PEPPER"]
    assert "MP_AUTH_DATABASE_URL" not in again["auth"]


def test_a_process_that_cannot_start_stops_the_others_and_says_which(tmp_path: Path) -> None:
    # The S3 store chosen, but no bucket named: the assets service refuses to start.
    env = {"MP_ASSETS_BLOB_STORE": "s3", "MP_GRACE_SECONDS": "1"}
    arguments = ("up", "--processes", "--port", str(free_port()))
    with magicpixels(*arguments, data_dir=tmp_path, env=env) as supervisor:
        assert supervisor.wait(timeout=120) == 1
        output = supervisor.stdout.read().decode() if supervisor.stdout else ""
    assert "magicpixels: the assets process exited while starting" in output
    assert "MP_ASSETS_S3_BUCKET is required" in output
    assert not list((tmp_path / "run").glob("*.address"))  # every other process stopped
