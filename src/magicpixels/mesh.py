"""Running the mesh: every service in this process (`up`), or one of them (`serve`)."""

import asyncio
import gc
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from magicpixels.core import settings as config
from magicpixels.core.bus import open_bus
from magicpixels.core.db import create_engine, migrate, reach
from magicpixels.core.server import RunningServer, wait_for_stop_signal
from magicpixels.core.service import Mesh, Service, start_service, stop_service

if TYPE_CHECKING:
    from magicpixels.gateway.server import GatewayServer

log = structlog.get_logger("magicpixels.mesh")

# Each service's class and settings; started in this order, as each calls those before it.
SERVICE_CLASSES: dict[str, tuple[str, type[config.ServiceSettings]]] = {
    "auth": ("magicpixels.services.auth.server:AuthService", config.AuthSettings),
    "billing": ("magicpixels.services.billing.server:BillingService", config.BillingSettings),
    "assets": ("magicpixels.services.assets.server:AssetsService", config.AssetsSettings),
    "jobs": ("magicpixels.services.jobs.server:JobsService", config.JobsSettings),
    "inference": (
        "magicpixels.services.inference.server:InferenceService",
        config.InferenceSettings,
    ),
}


def build_service(name: str, mesh: Mesh, settings: config.ServiceSettings | None = None) -> Service:
    path, settings_class = SERVICE_CLASSES[name]
    module_name, class_name = path.split(":")
    service_class = getattr(importlib.import_module(module_name), class_name)
    service: Service = service_class(mesh, settings or settings_class())
    return service


async def migrate_database(mesh_settings: config.MeshSettings, name: str) -> None:
    """Brings a service's database to its newest revision, as its settings name it."""
    settings = SERVICE_CLASSES[name][1]()
    if not isinstance(settings, config.DatabaseServiceSettings):
        raise ValueError(f"the {name} service has no database")
    url = settings.database_url_for(mesh_settings, name)
    engine = create_engine(url, schema=settings.database_schema)
    try:
        await reach(engine, name, url)
        await migrate(
            engine, f"magicpixels.services.{name}.migrations", schema=settings.database_schema
        )
    finally:
        await engine.dispose()


@dataclass
class RunningMesh:
    mesh: Mesh
    services: list[tuple[Service, RunningServer]]
    gateway: "GatewayServer | None" = None
    gateway_task: "asyncio.Task[None] | None" = None

    async def stop(self) -> None:
        """Stops the gateway, then the services in reverse order; one failing stops no other."""
        if self.gateway is not None:
            await self.gateway.stop(self.gateway_task)
        for service, server in reversed(self.services):
            try:
                await stop_service(service, server, self.mesh.settings)
            except Exception:
                log.exception("service_stop_failed", service=service.name)
        await self.mesh.close()
        await self.mesh.bus.close()


async def start_mesh(
    mesh_settings: config.MeshSettings,
    gateway_settings: config.GatewaySettings | None,
    only: tuple[str, ...] = config.SERVICES,
    service_settings: dict[str, config.ServiceSettings] | None = None,
) -> RunningMesh:
    """Starts the named services (and the gateway unless it is None), each on its own port.

    The gateway's port is taken first, so a port in use stops the start before anything runs.
    """
    mesh = Mesh(mesh_settings, open_bus(mesh_settings.redis_url), served_here=frozenset(only))
    running = RunningMesh(mesh, [])
    try:
        if gateway_settings is not None:
            running.gateway = _gateway(mesh, gateway_settings)
        for name in only:
            settings = (service_settings or {}).get(name)
            if name == "jobs" and running.gateway is not None:
                settings = _on_gateway_origin(settings, running.gateway.settings)
            service = build_service(name, mesh, settings)
            running.services.append((service, await start_service(service, mesh)))
        if running.gateway is not None:
            running.gateway_task = await running.gateway.start()
    except BaseException:
        await running.stop()
        raise
    return running


def _on_gateway_origin(
    settings: config.ServiceSettings | None, gateway: config.GatewaySettings
) -> config.ServiceSettings:
    """The jobs service's settings with the origin of the gateway started beside it (its
    --port, or the free port it took) as the one webhook payloads' result URLs name, unless
    they name one already: the environment alone does not know it."""
    jobs = settings or config.JobsSettings()
    assert isinstance(jobs, config.JobsSettings)
    if jobs.public_url is not None:
        return jobs
    return jobs.model_copy(update={"public_url": gateway.base_url()})


def _gateway(mesh: Mesh, settings: config.GatewaySettings) -> "GatewayServer":
    # Imported here: FastAPI and uvicorn cost memory that processes without a gateway never need.
    from magicpixels.gateway.app import create_app
    from magicpixels.gateway.server import GatewayServer
    from magicpixels.gateway.state import Gateway

    shared = Gateway(mesh, settings)
    return GatewayServer(create_app(shared), settings, mesh.settings, shared.draining)


# Collections of the youngest generation start after this many new objects (700 by default):
# a traced request allocates thousands of short-lived ones, so at the default the collector ran
# several times per request (bench/observability.py: a traced POST /v1/jobs then took 7% more
# CPU, an untraced one 3%).
_GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once started: what startup made lives as long as the process, so the collector stops
    walking it (gc.freeze), and collects the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)


async def run_until_stopped(running: RunningMesh) -> None:
    settle_heap()
    stop = asyncio.create_task(wait_for_stop_signal())
    waiting = {stop, *([running.gateway_task] if running.gateway_task else [])}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        log.info("stopping")
        await running.stop()
