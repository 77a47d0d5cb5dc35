"""Running the mesh: every service in this process (`up`), or one of them (`serve`)."""

import asyncio
import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
import uvicorn

from magicpixels.core import settings as config
from magicpixels.core.bus import open_bus
from magicpixels.core.server import RunningServer, wait_for_stop_signal
from magicpixels.core.service import Mesh, Service, start_service, stop_service

log = structlog.get_logger("magicpixels.mesh")

# Each service's class and settings; started in this order, as each calls those before it.
SERVICE_CLASSES: dict[str, tuple[str, type[config.ServiceSettings]]] = {
    "auth": ("magicpixels.services.auth.server:AuthService", config.AuthSettings),
    "billing": ("magicpixels.services.billing.server:BillingService", config.BillingSettings),
    "assets": ("magicpixels.services.assets.server:AssetsService", config.AssetsSettings),
    "jobs": ("magicpixels.services.jobs.server:JobsService", config.JobsSettings),
    "inference": ("magicpixels.services.inference.server:InferenceService", config.InferenceSettings),
}


def build_service(name: str, mesh: Mesh, settings: config.ServiceSettings | None = None) -> Service:
    path, settings_class = SERVICE_CLASSES[name]
    module_name, class_name = path.split(":")
    service_class = getattr(importlib.import_module(module_name), class_name)
    service: Service = service_class(mesh, settings or settings_class())
    return service


class _GatewayServer(uvicorn.Server):
    """uvicorn, minus its signal handling: the mesh stops every part itself, in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningMesh:
    mesh: Mesh
    services: list[tuple[Service, RunningServer]]
    gateway: _GatewayServer | None = None
    gateway_task: "asyncio.Task[None] | None" = None

    async def stop(self) -> None:
        if self.gateway is not None and self.gateway_task is not None:
            self.gateway.should_exit = True
            await self.gateway_task
        for service, server in reversed(self.services):
            await stop_service(service, server, self.mesh.settings.grace_seconds)
        await self.mesh.close()
        await self.mesh.bus.close()


async def start_mesh(
    mesh_settings: config.MeshSettings,
    gateway_settings: config.GatewaySettings | None,
    only: tuple[str, ...] = config.SERVICES,
    service_settings: dict[str, config.ServiceSettings] | None = None,
) -> RunningMesh:
    """Starts the named services (and the gateway unless it is None), each on its own port."""
    mesh = Mesh(mesh_settings, open_bus(mesh_settings.redis_url))
    running = RunningMesh(mesh, [])
    try:
        for name in only:
            service = build_service(name, mesh, (service_settings or {}).get(name))
            running.services.append((service, await start_service(service, mesh)))
        if gateway_settings is not None:
            await _start_gateway(running, gateway_settings)
    except BaseException:
        await running.stop()
        raise
    return running


async def _start_gateway(running: RunningMesh, settings: config.GatewaySettings) -> None:
    from magicpixels.gateway.app import create_app  # the gateway imports FastAPI: only when served

    app = create_app(running.mesh, settings)
    server = _GatewayServer(
        uvicorn.Config(
            app, host=settings.host, port=settings.port, log_config=None, access_log=False,
            lifespan="off", timeout_graceful_shutdown=int(running.mesh.settings.grace_seconds),
        )
    )
    running.gateway = server
    running.gateway_task = asyncio.create_task(server.serve())
    while not server.started:
        if running.gateway_task.done():
            running.gateway_task.result()  # raises why it could not start (port taken...)
            raise RuntimeError(f"the gateway stopped while starting on port {settings.port}")
        await asyncio.sleep(0.01)
    # Port 0 took a free port: signed URLs must name the real one.
    settings.port = server.servers[0].sockets[0].getsockname()[1]


async def run_until_stopped(running: RunningMesh) -> None:
    stop = asyncio.create_task(wait_for_stop_signal())
    waiting = {stop, *([running.gateway_task] if running.gateway_task else [])}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        log.info("stopping")
        await running.stop()
