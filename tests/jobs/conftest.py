"""Fixtures of the jobs tests: the real billing service, on its own database, and a running jobs
service that reaches it through the mesh."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import idempotency
from magicpixels.core.errors import remote_error
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import BillingSettings, JobsSettings
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.billing.server import BillingService
from magicpixels.services.jobs import domain
from magicpixels.services.jobs.server import JobsService
from tests.conftest import Database, channel_to, serving
from tests.support import PATIENCE_SECONDS, eventually, mesh_databases

ACCOUNT = "acct_test"
# How long a test waits for something the mesh does on its own: reconnecting, reconciling.


class Billing:
    """The real billing service of a test, which the test may stop and start again.

    It starts again on the same port and database, so the jobs service's channel to billing,
    cached by the mesh, reaches it again and finds the holds it left.
    """

    def __init__(self, mesh: Mesh, settings: BillingSettings) -> None:
        self._mesh = mesh
        self._settings = settings
        self._running: AsyncExitStack | None = None
        self.stub: billing_pb2_grpc.BillingServiceStub

    async def start(self) -> None:
        running = AsyncExitStack()
        service = BillingService(self._mesh, self._settings)
        server = await running.enter_async_context(serving(service, self._mesh))
        channel = channel_to(server, self._mesh)
        running.push_async_callback(channel.close)
        self._settings = self._settings.model_copy(update={"port": server.port})
        self.stub = billing_pb2_grpc.BillingServiceStub(channel)
        self._running = running

    async def stop(self) -> None:
        """Stops the server: calls on a channel already open to billing fail with UNAVAILABLE."""
        if self._running is not None:
            running, self._running = self._running, None
            await running.aclose()

    async def restart(self) -> None:
        """Starts billing again and waits until the mesh's channel to it is connected."""
        await self.start()
        await self._connected()

    @asynccontextmanager
    async def hung(self) -> AsyncIterator[None]:
        """Billing stopped and, on its port, a server that never answers: every call to billing
        waits out its deadline. Billing stays stopped after the block."""
        await self.stop()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_NeverAnswers()])
        server.add_insecure_port(f"{self._settings.host}:{self._settings.port}")
        await server.start()
        try:
            await self._connected()
            yield
        finally:
            await server.stop(None)

    async def _connected(self) -> None:
        ready = self._mesh.channel("billing").channel_ready()
        await asyncio.wait_for(ready, PATIENCE_SECONDS)

    async def grant(self, credits: int, account_id: str = ACCOUNT) -> None:
        await self.stub.Grant(billing_pb2.GrantRequest(account_id=account_id, amount=credits))

    async def balance(self, account_id: str = ACCOUNT) -> tuple[int, int]:
        """The account's (available, reserved) credits."""
        found = await self.stub.GetBalance(billing_pb2.GetBalanceRequest(account_id=account_id))
        return found.available, found.reserved

    async def references(self, kind: int, account_id: str = ACCOUNT) -> list[str]:
        """The references of the account's ledger entries of this kind, one per entry, sorted."""
        request = billing_pb2.ListLedgerEntriesRequest(account_id=account_id, page_size=100)
        found: list[str] = []
        while True:
            page = await self.stub.ListLedgerEntries(request)
            found += [entry.reference for entry in page.ledger_entries if entry.kind == kind]
            if not page.next_page_token:
                return sorted(found)
            request.page_token = page.next_page_token

    async def held(self, account_id: str = ACCOUNT) -> list[str]:
        return await self.references(billing_pb2.LEDGER_ENTRY_KIND_HOLD, account_id)

    async def settled(self, account_id: str = ACCOUNT) -> tuple[list[str], list[str]]:
        """The references captured and those released, one per CAPTURE or RELEASE entry."""
        captured = await self.references(billing_pb2.LEDGER_ENTRY_KIND_CAPTURE, account_id)
        released = await self.references(billing_pb2.LEDGER_ENTRY_KIND_RELEASE, account_id)
        return captured, released

    async def settle_to(self, captured: list[str], released: list[str]) -> None:
        """Waits until these holds were captured and those released, and no other was: ended
        jobs are settled in the background."""
        expected = (sorted(captured), sorted(released))

        async def settled() -> bool:
            return await self.settled() == expected

        await eventually(settled)


class _NeverAnswers(grpc.GenericRpcHandler):
    """Takes every call and answers none."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(_never_answer)


async def _never_answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    return await never


@pytest.fixture
def billing_settings(database: Database, tmp_path: Path) -> BillingSettings:
    """Billing's own database: a SQLite file beside the jobs one, or a schema of its own."""
    return cast(BillingSettings, mesh_databases(database, tmp_path)["billing"])


@pytest.fixture
async def billing(mesh: Mesh, billing_settings: BillingSettings) -> AsyncIterator[Billing]:
    """The real billing service, started before jobs so that the mesh finds its address."""
    running = Billing(mesh, billing_settings)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def jobs_settings(database: Database, **overrides: Any) -> JobsSettings:
    defaults: dict[str, Any] = {"lease_seconds": 30.0, "reconcile_interval_seconds": 0.1}
    return JobsSettings(
        database_url=database.url, database_schema=database.schema, **(defaults | overrides)
    )


@asynccontextmanager
async def jobs_server(
    mesh: Mesh, settings: JobsSettings
) -> AsyncIterator[jobs_pb2_grpc.JobsServiceStub]:
    async with serving(JobsService(mesh, settings), mesh) as server:
        channel = channel_to(server, mesh)
        try:
            yield jobs_pb2_grpc.JobsServiceStub(channel)
        finally:
            await channel.close()


@pytest.fixture
async def jobs(
    mesh: Mesh, database: Database, billing: Billing
) -> AsyncIterator[jobs_pb2_grpc.JobsServiceStub]:
    """The jobs service, with long leases so that only the expiry tests see one expire."""
    async with jobs_server(mesh, jobs_settings(database)) as stub:
        yield stub


@pytest.fixture
async def engine(mesh: Mesh, database: Database) -> AsyncIterator[AsyncEngine]:
    """The migrated jobs database, for tests that drive the store without a server."""
    engine = await open_database(
        mesh.settings, jobs_settings(database), "jobs", "magicpixels.services.jobs.migrations"
    )
    yield engine
    await engine.dispose()


def text_to_image(prompt: str = "a lighthouse at dusk", **fields: Any) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, prompt=prompt, **fields)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    return remote_error(error).reason


def claim_of(
    livemode: bool, spec: jobs_pb2.JobSpec, key: str = "key-1", digest: bytes = b""
) -> idempotency.Claim | None:
    """The claim a CreateJob request of the spec makes on its key."""
    return domain.idempotency_claim(
        jobs_pb2.CreateJobRequest(
            account_id="acct_1",
            livemode=livemode,
            spec=spec,
            idempotency_key=key,
            request_digest=digest,
        )
    )
