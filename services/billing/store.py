"""The billing tables and the transactions on them.

Every change of credits goes through `_apply`: one guarded UPDATE of the balance row (it
refuses to take available credits below zero) and its ledger entry, in the caller's transaction.
"""

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from magicpixels.core.db import row_fields
from magicpixels.core.errors import NotFound
from magicpixels.core.ids import new_id
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import (
    Balance,
    EntryKind,
    Hold,
    HoldState,
    LedgerEntry,
    Movement,
    Plan,
    Resolution,
    Subscription,
)

metadata = MetaData()

balances = Table(
    "balances",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("available", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    CheckConstraint("available >= 0", name="ck_balances_available_not_negative"),
    CheckConstraint("reserved >= 0", name="ck_balances_reserved_not_negative"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("amount", BigInteger, nullable=False),  # the signed change of available credits
    Column("balance_after", BigInteger, nullable=False),
    Column("reference", String(255)),
    Column("description", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_ledger_entries_account_id_id", "account_id", "id"),
    # One grant per grant reference; one hold, capture, release or expiry per hold.
    Index(
        "ux_ledger_entries_account_id_kind_reference",
        "account_id",
        "kind",
        "reference",
        unique=True,
    ),
)

holds = Table(
    "holds",
    metadata,
    Column("reference", String(255), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("captured_amount", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    Index("ix_holds_state_expires_at", "state", "expires_at"),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("plan_id", String(40), nullable=False),
    Column("current_period_start", DateTime(timezone=True), nullable=False),
    Column("current_period_end", DateTime(timezone=True), nullable=False),
)


async def get_balance(engine: AsyncEngine, account_id: str) -> Balance:
    """The account's credits; an account billing has never seen has none."""
    async with engine.connect() as connection:
        row = (await connection.execute(_balance_of(account_id))).first()
    return Balance(account_id, 0, 0) if row is None else Balance(**row._mapping)


async def reserve(engine: AsyncEngine, hold: Hold) -> Hold:
    """Records the hold and takes its credits, or answers the hold already under its reference.

    Of concurrent Reserves with one reference, the losers' inserts conflict with the winner's
    hold, so their transactions roll back, credits included, and they answer the winner's hold.
    """
    try:
        async with engine.begin() as connection:
            earlier = await _find_hold(connection, hold.reference)
            return earlier or await _insert_hold(connection, hold)
    except IntegrityError:
        return await get_hold(engine, hold.reference)


async def get_hold(engine: AsyncEngine, reference: str) -> Hold:
    async with engine.connect() as connection:
        return await _get_hold(connection, reference)


async def resolve_hold(
    engine: AsyncEngine, reference: str, decide: Callable[[Hold], Resolution], now: datetime
) -> Hold:
    """Resolves the held hold as `decide` says; a hold resolved before is answered as it is."""
    async with engine.begin() as connection:
        hold = await _get_hold(connection, reference)
        if hold.state is not HoldState.HELD:
            return hold
        resolved = await _resolve(connection, hold, decide(hold), now)
        return resolved or await _get_hold(connection, reference)


async def expire_holds(engine: AsyncEngine, now: datetime) -> list[Hold]:
    """Expires every hold still held past its expiry, returning its credits; answers those."""
    overdue = select(holds.c.reference).where(
        holds.c.state == HoldState.HELD, holds.c.expires_at <= now
    )
    async with engine.connect() as connection:
        references = (await connection.execute(overdue)).scalars().all()
    ended = [await resolve_hold(engine, ref, lambda _: domain.EXPIRY, now) for ref in references]
    return [hold for hold in ended if hold.state is HoldState.EXPIRED]


async def grant(engine: AsyncEngine, movement: Movement, now: datetime) -> LedgerEntry:
    """Adds credits; a grant with a reference already granted answers the first entry."""
    async with engine.begin() as connection:
        await _lock_balance(connection, movement.account_id)
        earlier = await _find_entry(connection, movement) if movement.reference else None
        return earlier or await _apply(connection, movement, now)


async def list_ledger_entries(
    engine: AsyncEngine, account_id: str, limit: int, before_id: str
) -> list[LedgerEntry]:
    """The account's entries, newest first, older than `before_id` when it is set."""
    query = select(ledger_entries).where(ledger_entries.c.account_id == account_id)
    if before_id:
        query = query.where(ledger_entries.c.id < before_id)
    async with engine.connect() as connection:
        rows = await connection.execute(query.order_by(ledger_entries.c.id.desc()).limit(limit))
    return [_entry(row) for row in rows]


async def subscribe(
    engine: AsyncEngine, account_id: str, plan: Plan, now: datetime
) -> Subscription:
    """Starts a period of the plan with its credits; within a running period of it, nothing."""
    async with engine.begin() as connection:
        await _lock_balance(connection, account_id)
        current = await _find_subscription(connection, account_id)
        if current is not None and domain.is_current(current, plan, now):
            return current
        started = domain.next_period(account_id, plan, now)
        await _save_subscription(connection, started, replace=current is not None)
        if plan.credits_per_period:
            await _apply(connection, domain.refill_movement(started, plan), now)
        return started


async def _insert_hold(connection: AsyncConnection, hold: Hold) -> Hold:
    await connection.execute(holds.insert().values(asdict(hold)))
    if hold.livemode:
        await _apply(connection, domain.hold_movement(hold), hold.created_at)
    return hold


async def _resolve(
    connection: AsyncConnection, hold: Hold, resolution: Resolution, now: datetime
) -> Hold | None:
    """None when a concurrent call resolved the hold first: only a held hold is updated."""
    query = (
        update(holds)
        .where(holds.c.reference == hold.reference, holds.c.state == HoldState.HELD)
        .values(state=resolution.state, captured_amount=resolution.captured, resolved_at=now)
        .returning(holds)
    )
    row = (await connection.execute(query)).first()
    if row is None:
        return None
    if hold.livemode:
        await _apply(connection, domain.resolution_movement(hold, resolution), now)
    return _hold(row)


async def _apply(connection: AsyncConnection, movement: Movement, now: datetime) -> LedgerEntry:
    """Moves the credits and appends their entry.

    The availability check and the change are one statement, so concurrent movements can never
    take available credits below zero.
    """
    change = (
        update(balances)
        .where(
            balances.c.account_id == movement.account_id,
            balances.c.available >= -movement.available,
        )
        .values(
            available=balances.c.available + movement.available,
            reserved=balances.c.reserved + movement.reserved,
        )
        .returning(balances.c.available)
    )
    available = (await connection.execute(change)).scalar_one_or_none()
    if available is None:
        balance = (await connection.execute(_balance_of(movement.account_id))).first()
        raise domain.insufficient_credits(-movement.available, balance.available if balance else 0)
    entry = LedgerEntry(
        id=new_id("ledg"),
        account_id=movement.account_id,
        kind=movement.kind,
        amount=movement.available,
        balance_after=available,
        reference=movement.reference,
        description=movement.description,
        created_at=now,
    )
    await connection.execute(ledger_entries.insert().values(asdict(entry)))
    return entry


async def _lock_balance(connection: AsyncConnection, account_id: str) -> None:
    """Creates the balance row if missing and locks it until the transaction ends.

    This serialises the account's grants and subscriptions on PostgreSQL; SQLite serialises
    every write transaction already.
    """
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    await connection.execute(
        dialect.insert(balances)
        .values(account_id=account_id, available=0, reserved=0)
        .on_conflict_do_nothing()
    )
    await connection.execute(_balance_of(account_id).with_for_update())


def _balance_of(account_id: str) -> Select[Any]:
    return select(balances).where(balances.c.account_id == account_id)


async def _find_hold(connection: AsyncConnection, reference: str) -> Hold | None:
    row = (await connection.execute(select(holds).where(holds.c.reference == reference))).first()
    return None if row is None else _hold(row)


async def _get_hold(connection: AsyncConnection, reference: str) -> Hold:
    hold = await _find_hold(connection, reference)
    if hold is None:
        raise NotFound("HOLD_NOT_FOUND", f"no hold with the reference {reference}")
    return hold


async def _find_entry(connection: AsyncConnection, movement: Movement) -> LedgerEntry | None:
    query = select(ledger_entries).where(
        ledger_entries.c.account_id == movement.account_id,
        ledger_entries.c.kind == movement.kind,
        ledger_entries.c.reference == movement.reference,
    )
    row = (await connection.execute(query)).first()
    return None if row is None else _entry(row)


async def _find_subscription(connection: AsyncConnection, account_id: str) -> Subscription | None:
    query = select(subscriptions).where(subscriptions.c.account_id == account_id)
    row = (await connection.execute(query)).first()
    return None if row is None else Subscription(**row_fields(row))


async def _save_subscription(
    connection: AsyncConnection, subscription: Subscription, *, replace: bool
) -> None:
    values = asdict(subscription)
    if replace:
        owned = subscriptions.c.account_id == subscription.account_id
        await connection.execute(update(subscriptions).where(owned).values(values))
    else:
        await connection.execute(subscriptions.insert().values(values))


def _hold(row: Row[Any]) -> Hold:
    return Hold(**{**row_fields(row), "state": HoldState(row.state)})


def _entry(row: Row[Any]) -> LedgerEntry:
    return LedgerEntry(**{**row_fields(row), "kind": EntryKind(row.kind)})
