"""The billing service over a real channel, and a check of the ledger's invariants."""

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import pytest
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.db import create_engine, migrate
from magicpixels.core.errors import RemoteError, remote_error
from magicpixels.core.service import Mesh
from magicpixels.core.settings import DEFAULT_PLANS, BillingSettings
from magicpixels.services.billing import store
from magicpixels.services.billing.domain import EntryKind, HoldState, Plan, PlanCatalog
from magicpixels.services.billing.server import MIGRATIONS, BillingService
from magicpixels.services.billing.store import BillingStore
from tests.conftest import Database, channel_to, serving

ACCOUNT = "acct_ada"
PLANS = PlanCatalog(Plan(**plan.model_dump()) for plan in DEFAULT_PLANS)
# Entries that add credits from outside the account, or take them away.
_GRANTS = {EntryKind.GRANT, EntryKind.SUBSCRIPTION_REFILL, EntryKind.ADJUSTMENT}
_RESOLUTION_KINDS = {
    HoldState.HELD: [],
    HoldState.CAPTURED: [EntryKind.CAPTURE],
    HoldState.RELEASED: [EntryKind.RELEASE],
    HoldState.EXPIRED: [EntryKind.EXPIRY],
}


class Books:
    """Reads billing's tables, from one snapshot, and checks that they agree."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def check(self, account_ids: Collection[str] | None = None) -> None:
        """Checks every account's books, or those of `account_ids`."""
        balances, entries, holds = await self._read(account_ids)
        for balance in balances:
            mine = [entry for entry in entries if entry.account_id == balance.account_id]
            live_holds = [
                hold for hold in holds if hold.account_id == balance.account_id and hold.livemode
            ]
            _check_balance(balance, mine, live_holds)
        for hold in holds:
            _check_hold(hold, [entry for entry in entries if _belongs(entry, hold)])

    async def _read(
        self, account_ids: Collection[str] | None
    ) -> tuple[list[Row[Any]], list[Row[Any]], list[Row[Any]]]:
        # One snapshot of the books: a transaction (SQLite's reads outside one are autocommit).
        postgres = self.engine.dialect.name == "postgresql"
        async with self.engine.connect() if postgres else self.engine.begin() as connection:
            if postgres:
                await connection.execution_options(isolation_level="REPEATABLE READ")
            read = []
            for table in (store.balances, store.ledger_entries, store.holds):
                query = select(table)
                if account_ids is not None:
                    query = query.where(table.c.account_id.in_(account_ids))
                read.append((await connection.execute(query)).all())
        balances, entries, holds = read
        return balances, entries, holds


def _check_balance(balance: Row[Any], entries: list[Row[Any]], live_holds: list[Row[Any]]) -> None:
    granted = sum(entry.amount for entry in entries if entry.kind in _GRANTS)
    captured = sum(hold.captured_amount for hold in live_holds if hold.state == HoldState.CAPTURED)
    assert balance.available >= 0
    assert balance.available == sum(entry.amount for entry in entries)
    assert balance.reserved == sum(
        hold.amount for hold in live_holds if hold.state == HoldState.HELD
    )
    assert balance.available + balance.reserved == granted - captured


def _belongs(entry: Row[Any], hold: Row[Any]) -> bool:
    return (
        entry.kind not in _GRANTS
        and entry.account_id == hold.account_id
        and entry.reference == hold.reference
    )


def _check_hold(hold: Row[Any], entries: list[Row[Any]]) -> None:
    """A live hold has its HOLD entry and one entry per resolution; a test-mode hold has none."""
    kinds = sorted(entry.kind for entry in entries)
    expected = [EntryKind.HOLD, *_RESOLUTION_KINDS[HoldState(hold.state)]] if hold.livemode else []
    assert kinds == sorted(expected)
    assert 0 <= hold.captured_amount <= hold.amount
    assert hold.livemode or hold.amount == 0


class CheckedBilling:
    """The billing stub; every call, failed ones included, is followed by `Books.check`."""

    def __init__(self, stub: billing_pb2_grpc.BillingServiceStub, books: Books) -> None:
        self._stub = stub
        self._books = books

    def __getattr__(self, rpc: str) -> Any:
        method = getattr(self._stub, rpc)

        async def checked(request: Any, **options: Any) -> Any:
            try:
                return await method(request, **options)
            finally:
                await self._books.check()

        return checked


async def refused(call: Awaitable[object]) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return remote_error(caught.value)


async def balance(billing: Any, account_id: str = ACCOUNT) -> tuple[int, int]:
    found = await billing.GetBalance(billing_pb2.GetBalanceRequest(account_id=account_id))
    return found.available, found.reserved


async def entries(billing: Any, account_id: str = ACCOUNT) -> list[tuple[str, int, int, str]]:
    """The account's ledger, oldest first, as (kind, amount, balance_after, reference)."""
    listed = await billing.ListLedgerEntries(
        billing_pb2.ListLedgerEntriesRequest(account_id=account_id, page_size=100)
    )
    return [
        (
            billing_pb2.LedgerEntryKind.Name(e.kind).removeprefix("LEDGER_ENTRY_KIND_"),
            e.amount,
            e.balance_after,
            e.reference,
        )
        for e in reversed(listed.ledger_entries)
    ]


ServeBilling = Callable[..., AbstractAsyncContextManager[CheckedBilling]]


@pytest.fixture
def billing_settings(database: Database) -> BillingSettings:
    return database.settings(BillingSettings)  # type: ignore[return-value]


@pytest.fixture
def serve_billing(database: Database, mesh: Mesh, books: Books) -> ServeBilling:
    """Serves billing with settings changed as the call says, over a checked stub."""

    @asynccontextmanager
    async def serve(**overrides: Any) -> AsyncIterator[CheckedBilling]:
        settings = database.settings(BillingSettings, **overrides)
        async with serving(BillingService(mesh, settings), mesh) as running:
            channel = channel_to(running, mesh)
            try:
                yield CheckedBilling(billing_pb2_grpc.BillingServiceStub(channel), books)
            finally:
                await channel.close()

    return serve


@pytest.fixture
async def billing(serve_billing: ServeBilling) -> AsyncIterator[CheckedBilling]:
    async with serve_billing() as served:
        yield served


@pytest.fixture
async def books(database: Database) -> AsyncIterator[Books]:
    engine = create_engine(database.url, schema=database.schema)
    try:
        yield Books(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def ledger(books: Books, database: Database) -> BillingStore:
    """The store on the billing database, migrated, as the service's own."""
    await migrate(books.engine, MIGRATIONS, schema=database.schema)
    return BillingStore(books.engine)
