"""The `magicpixels` command as an operator runs it: real processes, stopped by signals."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.processes import STOP_SECONDS, free_port, magicpixels, ready, stop, wait_for


def test_two_meshes_run_side_by_side_and_stop_cleanly(tmp_path: Path) -> None:
    ports = free_port(), free_port()
    with (
        magicpixels("up", "--port", str(ports[0]), data_dir=tmp_path / "a") as first,
        magicpixels("up", "--port", str(ports[1]), data_dir=tmp_path / "b") as second,
    ):
        for port in ports:
            wait_for(lambda port=port: ready(port), f"the mesh on port {port}")
        addresses = [(tmp_path / d / "run" / "jobs.address").read_text() for d in ("a", "b")]
        assert addresses[0] != addresses[1]
        assert stop(first, signal.SIGINT) == 0
        assert stop(second) == 0
        output = second.stdout.read().decode() if second.stdout else ""
        assert "Traceback" not in output, output


@pytest.mark.parametrize("processes", [(), ("--processes",)])
def test_up_on_a_taken_port_says_so_and_starts_nothing(
    tmp_path: Path, processes: tuple[str, ...]
) -> None:
    """With --processes too: its gateway would restart forever, while the server holding the
    port answered the supervisor's readiness checks."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with magicpixels("up", *processes, "--port", str(port), data_dir=tmp_path) as process:
            assert process.wait(timeout=STOP_SECONDS) == 1
            output = process.stdout.read().decode() if process.stdout else ""
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "Traceback" not in output
    assert "process_started" not in output
    assert not list((tmp_path / "run").glob("*.address"))


def test_serve_runs_one_service_until_sigterm(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {"MP_METRICS_PORT": str(metrics_port)}
    with magicpixels("serve", "billing", data_dir=tmp_path, env=env) as process:
        address_file = tmp_path / "run" / "billing.address"
        wait_for(address_file.exists, "billing's address")
        with grpc.insecure_channel(address_file.read_text()) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="magicpixels.billing.v1.BillingService"),
                timeout=5,
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Its metrics port, where its first sweep's measure of the held credits shows.
        held = 'magicpixels_credits_held{service="billing"} 0.0'
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: held in httpx.get(metrics_url, timeout=5).text, "billing's metrics")
        assert stop(process) == 0
        assert not address_file.exists()


def test_admin_grant_refuses_an_account_auth_does_not_know(tmp_path: Path) -> None:
    port = free_port()
    with magicpixels("up", "--port", str(port), data_dir=tmp_path) as mesh:
        wait_for(lambda: ready(port), "the mesh")
        env = {**os.environ, "MP_DATA_DIR": str(tmp_path)}
        refused = subprocess.run(
            [sys.executable, "-m", "magicpixels.cli", "admin", "grant-credits", "acct_typo", "5"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert refused.returncode == 1
        assert "acct_typo" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert stop(mesh) == 0


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "magicpixels.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_what_an_operator_must_fix_before_a_start_is_said_in_one_line(tmp_path: Path) -> None:
    """A database that cannot be reached or is not migrated, or a setting refused: one line
    naming the service, the URL without its password or the variable, and no traceback."""
    data = {"MP_DATA_DIR": str(tmp_path)}
    with socket.socket() as closed:  # bound, not listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        url = f"postgresql://mp:hunter2@127.0.0.1:{closed.getsockname()[1]}/mp"
        unreachable = _run("migrate", "auth", env={**data, "MP_AUTH_DATABASE_URL": url})
    unmigrated = _run("serve", "billing", env={**data, "MP_BILLING_MIGRATE_ON_START": "false"})
    wrong_driver = _run(
        "migrate", "jobs", env={**data, "MP_JOBS_DATABASE_URL": "postgresql+psycopg2://h/db"}
    )

    for finished in (unreachable, unmigrated, wrong_driver):
        assert finished.returncode == 1
        assert "Traceback" not in finished.stderr
        assert len(finished.stderr.strip().splitlines()) == 1, finished.stderr
    assert "the auth database at postgresql+asyncpg://mp:***@127.0.0.1" in unreachable.stderr
    assert "hunter2" not in unreachable.stderr
    assert "run `magicpixels migrate billing` first" in unmigrated.stderr
    assert "MP_JOBS_DATABASE_URL: postgresql URLs use the asyncpg driver" in wrong_driver.stderr


def test_an_admin_command_without_the_mesh_token_says_what_to_set(tmp_path: Path) -> None:
    """It once made a token of its own, which the services refused as wrong."""
    refused = _run(
        "admin",
        "grant-credits",
        "acct_x",
        "5",
        env={
            "MP_DATA_DIR": str(tmp_path),
            "MP_AUTH_ADDRESS": "127.0.0.1:1",
            "MP_BILLING_ADDRESS": "127.0.0.1:1",
        },
    )
    assert refused.returncode == 1
    assert "no service token: set MP_SERVICE_TOKEN" in refused.stderr
    assert not (tmp_path / "secrets").exists()


def test_a_new_data_folder_is_its_users_alone(tmp_path: Path) -> None:
    """It holds the databases (every account's webhook secret), the blobs and the secrets."""
    folder = tmp_path / "mesh"
    migrated = _run("migrate", "auth", env={"MP_DATA_DIR": str(folder)})

    assert migrated.returncode == 0, migrated.stderr
    assert folder.stat().st_mode & 0o777 == 0o700
