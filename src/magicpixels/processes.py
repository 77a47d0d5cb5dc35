"""`magicpixels up --processes`: every service in its own OS process, as a cluster runs them.

Each process is `magicpixels serve <service>`, configured only through its environment, as a
Kubernetes pod is: its port, its peers' addresses, the shared secrets and, when given, its
database (one PostgreSQL schema per service), Redis and the S3 store. A process that dies is
started again after a growing pause, as the kubelet restarts a container.
"""

import asyncio
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from magicpixels.core import settings as config
from magicpixels.core.server import gateway_socket, wait_for_stop_signal

log = structlog.get_logger("magicpixels.processes")

# Started together; stopped gateway first, then in reverse, so no caller outlives its callees.
PROCESSES = (*config.SERVICES, "gateway")
# Generated once into the data folder unless the environment sets them, then handed to the
# processes that use them: variable, generated secret's name, the processes that get it.
_SECRETS = (
    ("MP_SERVICE_TOKEN", "service_token", PROCESSES),
    ("MP_AUTH_PEPPER", "auth_pepper", ("auth",)),
    ("MP_ASSETS_URL_SIGNING_KEY", "assets_url_signing_key", ("assets",)),
)
_READY_POLL_SECONDS = 0.1
# A process that served this long before dying is restarted at once, as a first failure.
_STABLE_SECONDS = 60.0
_MAX_RESTART_DELAY_SECONDS = 30.0


def topology(
    mesh: config.MeshSettings,
    gateway: config.GatewaySettings,
    environ: Mapping[str, str],
    database_url: str | None = None,
) -> dict[str, dict[str, str]]:
    """Each process's environment: what the caller's sets, completed as a pod's would be."""
    shared = {
        **environ,
        "MP_DATA_DIR": str(mesh.data_dir),
        "MP_GATEWAY_HOST": gateway.host,
        "MP_GATEWAY_PORT": str(gateway.port),
    }
    for service in config.SERVICES:
        prefix = f"MP_{service.upper()}"
        port = int(environ.get(f"{prefix}_PORT") or 0) or _free_port()
        shared |= {f"{prefix}_PORT": str(port), f"{prefix}_ADDRESS": f"127.0.0.1:{port}"}
        shared.setdefault(f"{prefix}_HOST", "127.0.0.1")
        if database_url and service in config.DATABASE_SERVICES:
            shared.setdefault(f"{prefix}_DATABASE_URL", database_url)
            shared.setdefault(f"{prefix}_DATABASE_SCHEMA", service)
    environments = {name: dict(shared) for name in PROCESSES}
    # One machine: each service's metrics on a port of its own, which it binds itself and logs
    # (`metrics_serving`); a port picked here could be taken before the service binds it.
    for service in config.SERVICES:
        environments[service]["MP_METRICS_PORT"] = "0"
    for variable, name, users in _SECRETS:
        value = environ.get(variable) or config.load_or_create_secret(mesh.data_dir, name)
        for user in users:
            environments[user][variable] = value
    return environments


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServiceProcess:
    """One `magicpixels serve` process, started again whenever it dies unasked."""

    name: str
    environment: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "magicpixels.cli",
            "serve",
            self.name,
            env=self.environment,
            stdin=asyncio.subprocess.DEVNULL,
            # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
            # then stops every process in order. (No preexec_fn: the child must run no Python
            # between fork and exec while gRPC threads run here.)
            process_group=0,
        )
        self.started_at = time.monotonic()
        log.info("process_started", service=self.name, pid=self.process.pid)

    @property
    def exited(self) -> bool:
        return self.process is None or self.process.returncode is not None

    async def serving(self) -> bool:
        """Whether it serves: its gRPC health check answers SERVING, or the gateway's /readyz
        answers 200 (which asks every service's)."""
        if self.name == "gateway":
            url = f"http://127.0.0.1:{self.environment['MP_GATEWAY_PORT']}/readyz"
            return await asyncio.to_thread(_http_ok, url)
        address = self.environment[f"MP_{self.name.upper()}_ADDRESS"]
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def supervise(self) -> None:
        """Starts the process again each time it exits, until cancelled (then `stop` it)."""
        while True:
            assert self.process is not None
            code = await self.process.wait()
            lived = time.monotonic() - self.started_at
            self.failures = 1 if lived >= _STABLE_SECONDS else self.failures + 1
            delay = min(_MAX_RESTART_DELAY_SECONDS, 2.0 ** (self.failures - 1))
            log.warning("process_exited", service=self.name, code=code, restart_in=delay)
            await asyncio.sleep(delay)
            await self.start()

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL if it outlives its grace (and a margin to close)."""
        if self.process is None or self.exited:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace + 10)
        except TimeoutError:
            log.warning("process_killed", service=self.name)
            self.process.kill()
            await self.process.wait()


class ProcessFailed(RuntimeError):
    """A process of the topology could not start."""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # refused, not ready (an HTTP error is an OSError too), or timed out
        return False


async def run_processes(
    environments: dict[str, dict[str, str]], grace: float, announce: str
) -> None:
    """Starts every process, prints `announce` once all serve, and runs until SIGTERM/SIGINT."""
    gateway = environments["gateway"]
    # Taken, the gateway would restart forever, while another server on the port answered the
    # readiness checks in its stead: refused here, as `up` refuses it.
    gateway_socket(gateway["MP_GATEWAY_HOST"], int(gateway["MP_GATEWAY_PORT"])).close()
    processes = [ServiceProcess(name, environments[name]) for name in PROCESSES]
    started = time.monotonic()
    stop = asyncio.create_task(wait_for_stop_signal())
    supervisors: list[asyncio.Task[None]] = []
    ready: asyncio.Task[None] | None = None
    try:
        for process in processes:
            await process.start()
        ready = asyncio.create_task(_until_serving(processes))
        await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            return
        ready.result()  # raises ProcessFailed
        seconds = time.monotonic() - started
        print(f"{announce}  ({len(processes)} processes ready in {seconds:.1f}s)", flush=True)
        supervisors = [asyncio.create_task(process.supervise()) for process in processes]
        await stop
    finally:
        for task in (stop, ready, *supervisors):
            if task is not None:
                task.cancel()
        log.info("stopping")
        for process in reversed(processes):
            await process.stop(grace)


async def _until_serving(processes: list[ServiceProcess]) -> None:
    """Returns once every process serves; a process that exits first fails the start."""
    waiting = list(processes)
    while waiting:
        for process in waiting:
            if process.exited:
                raise ProcessFailed(f"the {process.name} process exited while starting")
        answers = await asyncio.gather(*(process.serving() for process in waiting))
        waiting = [process for process, ok in zip(waiting, answers, strict=True) if not ok]
        if waiting:
            await asyncio.sleep(_READY_POLL_SECONDS)
