"""Helpers the tests import: database settings, running a service, a channel to it."""

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest

from magicpixels.core.clients import open_channel
from magicpixels.core.server import RunningServer
from magicpixels.core.service import Mesh, Service, start_service, stop_service
from magicpixels.core.settings import DatabaseServiceSettings, ServiceSettings
from magicpixels.mesh import RunningMesh
from magicpixels.services.jobs.signals import QueueSignal
from magicpixels.services.jobs.webhooks import WebhookDispatcher

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

POSTGRES_URL = os.environ.get(
    "MP_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

S = TypeVar("S", bound=DatabaseServiceSettings)

# How long a test waits for what the mesh does in the background before calling it a failure.
PATIENCE_SECONDS = 10.0


async def eventually(condition: Callable[[], Awaitable[bool]]) -> None:
    """Waits until the condition holds, which the mesh brings about in the background."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + PATIENCE_SECONDS
    while not await condition():
        assert loop.time() < give_up_at, "the condition did not come about"
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Database:
    url: str
    schema: str | None

    def settings(self, cls: type[S], **overrides: Any) -> S:
        return cls(**{"database_url": self.url, "database_schema": self.schema, **overrides})


@asynccontextmanager
async def serving(service: Service, mesh: Mesh) -> AsyncIterator[RunningServer]:
    """Runs the service on a free port for the body of the block, registered in the mesh."""
    server = await start_service(service, mesh)
    try:
        yield server
    finally:
        await stop_service(service, server, mesh.settings)


def channel_to(server: RunningServer, mesh: Mesh) -> grpc.aio.Channel:
    return open_channel(server.address, service_token=mesh.settings.internal_token(), timeout=10.0)


def mesh_databases(database: Database, data_dir: Path) -> dict[str, ServiceSettings]:
    """Settings giving each service of a mesh its own database: a SQLite file or a schema."""
    from magicpixels.mesh import SERVICE_CLASSES

    settings: dict[str, ServiceSettings] = {}
    for name, (_, settings_class) in SERVICE_CLASSES.items():
        if not issubclass(settings_class, DatabaseServiceSettings):
            continue
        if database.schema is None:
            url = f"sqlite+aiosqlite:///{data_dir / f'{name}.db'}"
            settings[name] = settings_class(database_url=url)
        else:
            settings[name] = database.settings(
                settings_class, database_schema=f"{database.schema}_{name}"
            )
    return settings


@asynccontextmanager
async def services_of(
    database: Database, data_dir: Path, names: tuple[str, ...], funded: dict[str, int]
) -> AsyncIterator[RunningMesh]:
    """The named services in this process, each on its own database, with accounts granted
    credits (`funded`: account id -> credits)."""
    from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
    from magicpixels.core.settings import MeshSettings
    from magicpixels.mesh import start_mesh

    running = await start_mesh(
        MeshSettings(data_dir=data_dir, grace_seconds=0.2),
        None,
        only=names,
        service_settings=mesh_databases(database, data_dir),
    )
    try:
        billing = billing_pb2_grpc.BillingServiceStub(running.mesh.channel("billing"))
        for account_id, credits in funded.items():
            await billing.Grant(billing_pb2.GrantRequest(account_id=account_id, amount=credits))
        yield running
    finally:
        await running.stop()


class LeaseWaits:
    """Follows the waits of LeaseJob calls that found no work (the real QueueSignal.wait, which
    still runs): when one starts, and how each ended, so that a test synchronises on them
    instead of sleeping. The webhook dispatcher's waits, on a signal of its own, are not
    followed: one that began first would have passed for a LeaseJob's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = asyncio.Event()
        # "woken" by a queued job, "ran out", or "cancelled" with its call.
        self.ended: list[str] = []
        wait = QueueSignal.wait

        async def followed(ticket: asyncio.Event, seconds: float) -> None:
            if _in_webhook_dispatcher():  # it waits on a QueueSignal of its own
                return await wait(ticket, seconds)
            self.started.set()
            try:
                await wait(ticket, seconds)
            except asyncio.CancelledError:
                self.ended.append("cancelled")
                raise
            self.ended.append("woken" if ticket.is_set() else "ran out")

        monkeypatch.setattr(QueueSignal, "wait", staticmethod(followed))


def _in_webhook_dispatcher() -> bool:
    task = asyncio.current_task()
    coroutine = task.get_coro() if task is not None else None
    return getattr(coroutine, "cr_code", None) is WebhookDispatcher.run.__code__


@contextmanager
def recorded_spans() -> Iterator["InMemorySpanExporter"]:
    """Tracing on, every span into memory, for the body of the block."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from magicpixels.core import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()
