"""Fixtures of the jobs tests: a billing test double on a real port and a running jobs service."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.errors import FailedPrecondition, NotFound, remote_error
from magicpixels.core.server import ServiceBinding, start_server
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import JobsSettings, write_address
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.jobs.server import JobsService

from tests.conftest import Database, channel_to, serving

PRICES = {"text_to_image": 1, "image_to_image": 1}
ACCOUNT = "acct_test"


class BillingDouble(billing_pb2_grpc.BillingServiceServicer):
    """A TEST DOUBLE of the billing contract (protos/magicpixels/billing/v1/billing.proto), held
    in dicts: Quote, Reserve, Capture and Release only.

    Reserve holds the price or refuses with FAILED_PRECONDITION / INSUFFICIENT_CREDITS; test-mode
    holds cost nothing; the three hold calls are idempotent by reference, and resolving a hold
    the other way is refused with HOLD_ALREADY_RESOLVED. `captured` and `released` list each hold
    once, when it is actually resolved, so a repeated call shows as nothing new. To be replaced by
    the real billing service in the integration tests.
    """

    def __init__(self) -> None:
        self.available: dict[str, int] = {}
        self.holds: dict[str, billing_pb2.Hold] = {}
        self.captured: list[str] = []
        self.released: list[str] = []
        self.fail_next_with: grpc.StatusCode | None = None

    def grant(self, account_id: str, credits: int) -> None:
        self.available[account_id] = self.available.get(account_id, 0) + credits

    async def Quote(
        self, request: billing_pb2.QuoteRequest, context: Any
    ) -> billing_pb2.QuoteResponse:
        cost = self._price(request.usage, request.livemode)
        available = self.available.get(request.account_id, 0)
        return billing_pb2.QuoteResponse(
            cost_credits=cost, available_credits=available, sufficient=available >= cost
        )

    async def Reserve(self, request: billing_pb2.ReserveRequest, context: Any) -> billing_pb2.Hold:
        await self._maybe_fail(context)
        if request.reference in self.holds:
            return self.holds[request.reference]
        amount = self._price(request.usage, request.livemode)
        if self.available.get(request.account_id, 0) < amount:
            raise FailedPrecondition("INSUFFICIENT_CREDITS", f"the job costs {amount} credits")
        self.available[request.account_id] = self.available.get(request.account_id, 0) - amount
        hold = billing_pb2.Hold(
            reference=request.reference,
            account_id=request.account_id,
            amount=amount,
            state=billing_pb2.HOLD_STATE_HELD,
            livemode=request.livemode,
        )
        self.holds[request.reference] = hold
        return hold

    async def Capture(self, request: billing_pb2.CaptureRequest, context: Any) -> billing_pb2.Hold:
        await self._maybe_fail(context)
        hold = self._resolve(request.reference, billing_pb2.HOLD_STATE_CAPTURED)
        if hold is not None:
            hold.captured_amount = hold.amount
            self.captured.append(request.reference)
        return self.holds[request.reference]

    async def Release(self, request: billing_pb2.ReleaseRequest, context: Any) -> billing_pb2.Hold:
        await self._maybe_fail(context)
        hold = self._resolve(request.reference, billing_pb2.HOLD_STATE_RELEASED)
        if hold is not None:
            self.available[hold.account_id] += hold.amount
            self.released.append(request.reference)
        return self.holds[request.reference]

    def _resolve(self, reference: str, state: int) -> billing_pb2.Hold | None:
        """The hold when this call resolves it; None when it already was resolved this way."""
        hold = self.holds.get(reference)
        if hold is None:
            raise NotFound("HOLD_NOT_FOUND", f"no hold {reference}")
        if hold.state == state:
            return None
        if hold.state != billing_pb2.HOLD_STATE_HELD:
            raise FailedPrecondition("HOLD_ALREADY_RESOLVED", f"hold {reference} is resolved")
        hold.state = state
        return hold

    def _price(self, usage: billing_pb2.Usage, livemode: bool) -> int:
        return PRICES[usage.mode] if livemode else 0

    async def _maybe_fail(self, context: grpc.aio.ServicerContext) -> None:
        if self.fail_next_with is not None:
            code, self.fail_next_with = self.fail_next_with, None
            await context.abort(code, "billing is down")


@pytest.fixture
async def billing(mesh: Mesh) -> AsyncIterator[BillingDouble]:
    double = BillingDouble()
    binding = ServiceBinding(
        billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
        double,
        billing_pb2_grpc.add_BillingServiceServicer_to_server,
    )
    server = await start_server(
        [binding], host="127.0.0.1", port=0, service_token=mesh.settings.internal_token()
    )
    write_address(mesh.settings.data_dir, "billing", server.address)
    yield double
    await server.stop(0)


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
    mesh: Mesh, database: Database, billing: BillingDouble
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
