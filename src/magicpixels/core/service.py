"""What every service is built from and how one is started on its own port."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core import metrics
from magicpixels.core.bus import EventBus
from magicpixels.core.clients import open_channel
from magicpixels.core.db import create_engine, migrate, reach, require_migrated
from magicpixels.core.errors import Unavailable
from magicpixels.core.server import RunningServer, ServiceBinding, start_server
from magicpixels.core.settings import (
    SERVICES,
    DatabaseServiceSettings,
    MeshSettings,
    ServiceSettings,
    remember_port,
    remembered_port,
    remove_address,
    write_address,
)

StubT = TypeVar("StubT")


class Service(Protocol):
    name: str
    settings: ServiceSettings

    async def start(self) -> Sequence[ServiceBinding]:
        """Opens what the service needs (database, background tasks) and returns its servicers."""
        ...

    async def close(self) -> None: ...


@dataclass
class Mesh:
    """The shared runtime a service is built with: settings, the bus, channels to its peers."""

    settings: MeshSettings
    bus: EventBus
    # The services this process runs: all that an in-process bus carries announcements from.
    served_here: frozenset[str] = frozenset(SERVICES)
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _stubs: dict[tuple[str, object], Any] = field(default_factory=dict)

    def hears(self, service: str) -> bool:
        """Whether what the service announces on the bus reaches this process."""
        return self.bus.crosses_processes or service in self.served_here

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            try:
                address = self.settings.address_of(service)
            except LookupError as missing:  # not started yet: a caller may retry
                raise Unavailable("SERVICE_UNAVAILABLE", str(missing)) from None
            self._channels[service] = open_channel(
                address,
                service_token=self.settings.internal_token(),
                timeout=self.settings.rpc_timeout_seconds,
            )
        return self._channels[service]

    def stub(self, service: str, stub_class: Callable[[grpc.aio.Channel], StubT]) -> StubT:
        """A stub of the service, made once: building one builds a callable per method."""
        key = (service, stub_class)
        if key not in self._stubs:
            self._stubs[key] = stub_class(self.channel(service))
        stub: StubT = self._stubs[key]
        return stub

    async def close(self) -> None:
        self._stubs.clear()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def open_database(
    mesh: MeshSettings, settings: DatabaseServiceSettings, service: str, migrations: str
) -> AsyncEngine:
    """The service's engine on a database at its newest revision (migrated here, if allowed)."""
    url = settings.database_url_for(mesh, service)
    engine = create_engine(url, schema=settings.database_schema)
    try:
        await reach(engine, service, url)
        if settings.migrate_on_start:
            await migrate(engine, migrations, schema=settings.database_schema)
        else:
            await require_migrated(engine, migrations, service=service)
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def start_service(service: Service, mesh: Mesh) -> RunningServer:
    # The calls of the tasks that the service starts are counted as the service's.
    counted_as = metrics.current_service.set(service.name)
    try:
        bindings = await service.start()
    finally:
        metrics.current_service.reset(counted_as)
    data_dir = mesh.settings.data_dir
    server = await start_server(
        bindings,
        host=service.settings.host,
        port=service.settings.port or remembered_port(data_dir, service.name),
        service_token=mesh.settings.internal_token(),
        service=service.name,
        any_port_else=not service.settings.port,
    )
    remember_port(data_dir, service.name, server.port)
    write_address(data_dir, service.name, f"{service.settings.host}:{server.port}")
    return server


async def stop_service(service: Service, server: RunningServer, mesh: MeshSettings) -> None:
    remove_address(mesh.data_dir, service.name)  # clients stop finding it before it goes
    await server.stop(mesh.grace_seconds)
    await service.close()
