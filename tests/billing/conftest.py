"""The billing service over a real channel, and a check of the ledger's invariants."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2_grpc
from magicpixels.core.db import create_engine
from magicpixels.core.service import Mesh
from magicpixels.core.settings import BillingSettings
from magicpixels.services.billing import store
from magicpixels.services.billing.domain import EntryKind, HoldState
from magicpixels.services.billing.server import BillingService
from tests.conftest import Database, channel_to, serving

_GRANTS = {EntryKind.GRANT, EntryKind.SUBSCRIPTION_REFILL}
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

    async def check(self) -> None:
        balances, entries, holds = await self._read()
        for balance in balances:
            mine = [entry for entry in entries if entry.account_id == balance.account_id]
            live_holds = [
                hold for hold in holds if hold.account_id == balance.account_id and hold.livemode
            ]
            _check_balance(balance, mine, live_holds)
        for hold in holds:
            _check_hold(hold, [entry for entry in entries if _belongs(entry, hold)])

    async def _read(self) -> tuple[list[Row[Any]], list[Row[Any]], list[Row[Any]]]:
        async with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":  # SQLite serialises every transaction
                await connection.execution_options(isolation_level="REPEATABLE READ")
            tables = [store.balances, store.ledger_entries, store.holds]
            balances, entries, holds = [(await connection.execute(select(t))).all() for t in tables]
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

        async def checked(request: Any) -> Any:
            try:
                return await method(request)
            finally:
                await self._books.check()

        return checked


@pytest.fixture
def billing_settings(database: Database) -> BillingSettings:
    return database.settings(BillingSettings)  # type: ignore[return-value]


@pytest.fixture
async def billing(
    billing_settings: BillingSettings, mesh: Mesh, books: Books
) -> AsyncIterator[Any]:
    async with serving(BillingService(mesh, billing_settings), mesh) as running:
        channel = channel_to(running, mesh)
        try:
            yield CheckedBilling(billing_pb2_grpc.BillingServiceStub(channel), books)
        finally:
            await channel.close()


@pytest.fixture
async def books(database: Database) -> AsyncIterator[Books]:
    engine = create_engine(database.url, schema=database.schema)
    try:
        yield Books(engine)
    finally:
        await engine.dispose()
