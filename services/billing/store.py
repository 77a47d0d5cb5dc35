"""The billing tables and the statements on them.

Every change of credits moves the account's balance row with one guarded UPDATE (it refuses to
take available credits below zero) and appends its ledger entry, atomically. Reserve and the
resolution of a hold run for every job. On PostgreSQL, Reserve is one statement that commits on
its own: data-modifying CTEs chain the balance, the hold and the entry, in one round trip. A
resolution reads the hold, for the domain to decide what it becomes, then is one such statement
too, guarded by the hold still being held. SQLite cannot modify data in a CTE; it runs the same
statements in one transaction, and it serialises every writer.

Concurrent Reserves, and concurrent resolutions, run in batches (core/batching.py): on SQLite a
batch is one transaction; on PostgreSQL one statement over arrays, one row per call (after one
read of the holds, for resolutions), does what it can (an account must be able to pay for all
of its holds in the batch), and the rest goes one by one, as above, so that each call gets the
answer it would get alone.

The hot statements are built and compiled once, with bind parameters. On PostgreSQL they run on
asyncpg directly: SQLAlchemy's work per execution (parameters, result rows, events) cost several
times the CPU of the round trip itself, on every job (profiled under bench/billing.py).
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    CheckConstraint,
    Column,
    ColumnElement,
    DateTime,
    Executable,
    FromClause,
    Index,
    Insert,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    any_,
    bindparam,
    case,
    column,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.selectable import CTE, TableValuedAlias

from magicpixels.core import metrics
from magicpixels.core.batching import Batcher, Outcome
from magicpixels.core.db import row_fields, statements_alone
from magicpixels.core.errors import DomainError, NotFound
from magicpixels.core.ids import new_id
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import (
    Balance,
    EntryKind,
    Hold,
    HoldState,
    LedgerEntry,
    Movement,
    Resolution,
    Subscription,
    SubscriptionStatus,
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
    # One grant per grant reference, one refill per period; one hold, capture, release or
    # expiry per hold.
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
    Column("mode", String(32), nullable=False),
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
    Column("current_period_start", DateTime(timezone=True)),
    Column("current_period_end", DateTime(timezone=True)),
    Column("id", String(64), nullable=False),
    Column("status", String(10), nullable=False),
    Column("cancel_at_period_end", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("canceled_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Index("ux_subscriptions_id", "id", unique=True),
    Index("ix_subscriptions_status_current_period_end", "status", "current_period_end"),
)


class _Hot:
    """A statement run for every job, compiled once for asyncpg. `first` answers its first row
    as a dict, `run` runs it; on SQLite both go through SQLAlchemy."""

    _DIALECT = PGDialect_asyncpg()

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled = statement.compile(dialect=self._DIALECT)

    async def first(
        self, connection: AsyncConnection, params: dict[str, Any]
    ) -> dict[str, Any] | None:
        if connection.dialect.name != "postgresql":
            row = (await connection.execute(self.statement, params)).first()
            return None if row is None else row_fields(row)
        record = await _driver(connection).fetchrow(self._compiled.string, *self._values(params))
        return None if record is None else dict(record)

    async def run(self, connection: AsyncConnection, params: dict[str, Any]) -> None:
        if connection.dialect.name != "postgresql":
            await connection.execute(self.statement, params)
            return
        await _driver(connection).execute(self._compiled.string, *self._values(params))

    async def all(
        self, connection: AsyncConnection, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Its rows as dicts; PostgreSQL only."""
        records = await _driver(connection).fetch(self._compiled.string, *self._values(params))
        return [dict(record) for record in records]

    def _values(self, params: dict[str, Any]) -> list[Any]:
        values = self._compiled.construct_params(params)
        return [values[name] for name in self._compiled.positiontup or ()]


def _driver(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a connection in use (its DBAPI connection is checked out)."""
    return connection.sync_connection.connection.driver_connection


# A movement's parameters (`_movement_params`).
_ACCOUNT = bindparam("move_account", type_=String)
_AVAILABLE = bindparam("move_available", type_=BigInteger)
_RESERVED = bindparam("move_reserved", type_=BigInteger)
_ENTRY_ID = bindparam("entry_id", type_=String)
_ENTRY_KIND = bindparam("entry_kind", type_=String)
_ENTRY_VALUES = (_ENTRY_ID, _ACCOUNT, _ENTRY_KIND, _AVAILABLE)
_ENTRY_TAIL = (
    bindparam("entry_reference", type_=String),
    bindparam("entry_description", type_=Text),
    bindparam("entry_created_at", type_=DateTime(timezone=True)),
)
_MOVEMENT = (_ACCOUNT, _AVAILABLE, _RESERVED, _ENTRY_ID, _ENTRY_KIND, *_ENTRY_TAIL)
# A hold's parameters: `hold_<column>`.
_HOLD = {column.name: bindparam(f"hold_{column.name}", type_=column.type) for column in holds.c}
# A resolution's: the hold's columns it sets.
_RESOLUTION = {
    "state": bindparam("resolve_state", type_=String),
    "captured_amount": bindparam("resolve_captured", type_=BigInteger),
    "resolved_at": bindparam("resolve_time", type_=DateTime(timezone=True)),
}

# The guarded change of a balance, which answers the available credits after it.
_MOVE = (
    update(balances)
    .where(balances.c.account_id == _ACCOUNT, balances.c.available >= -_AVAILABLE)
    .values(available=balances.c.available + _AVAILABLE, reserved=balances.c.reserved + _RESERVED)
    .returning(balances.c.available)
)
_MOVE_UNLESS_HELD = _MOVE.where(~exists().where(holds.c.reference == _HOLD["reference"]))


def _new_entry(balance_after: ColumnElement[Any], *source: FromClause) -> Insert:
    """The movement's entry, with the balance after it from `balance_after`."""
    values = select(*_ENTRY_VALUES, balance_after, *_ENTRY_TAIL).select_from(*source)
    return ledger_entries.insert().from_select([c.name for c in ledger_entries.c], values)


def _new_hold(*source: FromClause) -> Insert:
    return holds.insert().from_select(list(_HOLD), select(*_HOLD.values()).select_from(*source))


_ADD_ENTRY = _new_entry(bindparam("entry_balance_after", type_=BigInteger))
_ADD_HOLD = _Hot(_new_hold())
_GET_HOLD = _Hot(select(holds).where(holds.c.reference == _HOLD["reference"]))
# The resolution of a held hold, which answers the hold as it is then.
_RESOLVE = _Hot(
    update(holds)
    .where(holds.c.reference == _HOLD["reference"], holds.c.state == HoldState.HELD.value)
    .values(_RESOLUTION)
    .returning(*holds.c)
)


def _fused_reserve() -> Select[Any]:
    """Takes the credits unless the reference holds some already, then records the hold and
    its entry: one statement that answers the available credits after it, or no row."""
    moved = _MOVE_UNLESS_HELD.cte("moved")
    entry = _new_entry(moved.c.available, moved)
    return select(moved.c.available).add_cte(_new_hold(moved).cte("held"), entry.cte("entry"))


def _fused_resolution() -> Select[Any]:
    """Resolves the hold if still held, then returns its credits and records the entry: one
    statement that answers the resolved hold, or no row."""
    resolved = _RESOLVE.statement.cte("resolved")
    moved = _MOVE.where(exists(select(resolved.c.reference))).cte("moved")
    entry = _new_entry(moved.c.available, moved)
    return select(resolved).add_cte(moved, entry.cte("entry"))


_FUSED_RESERVE = _Hot(_fused_reserve())
_FUSED_RESOLUTION = _Hot(_fused_resolution())


# PostgreSQL's statements for a batch of Reserves or of resolutions (see core/batching.py): the
# batch's rows are the positions of the arrays bound to the single statements' parameter names.


def _rows_of(*params: BindParameter[Any]) -> TableValuedAlias:
    """The batch's rows, with its order as `position`."""
    arrays = [bindparam(param.key, type_=ARRAY(param.type)) for param in params]
    columns = [column(param.key, param.type) for param in params]
    rows = func.unnest(*arrays).table_valued(*columns, with_ordinality="position")
    return rows.render_derived("asked")


def _moved_many(source: CTE) -> tuple[CTE, CTE]:
    """Applies the movements of `source`'s rows where each account can pay for all of its rows;
    answers those rows with the balance after each, and the insert of their entries.

    The balance rows are locked in the order of their accounts, so batches over several
    accounts at once never deadlock one another.
    """
    totals = (
        select(
            source.c.move_account,
            func.sum(source.c.move_available).label("available"),
            func.sum(source.c.move_reserved).label("reserved"),
        )
        .group_by(source.c.move_account)
        .cte("totals")
    )
    locked = (
        select(balances.c.account_id)
        .join(totals, balances.c.account_id == totals.c.move_account)
        .order_by(balances.c.account_id)
        .with_for_update()
        .cte("locked")
    )
    moved = (
        update(balances)
        .where(
            balances.c.account_id == locked.c.account_id,
            balances.c.account_id == totals.c.move_account,
            balances.c.available >= -totals.c.available,
        )
        .values(
            available=balances.c.available + totals.c.available,
            reserved=balances.c.reserved + totals.c.reserved,
        )
        .returning(balances.c.account_id, balances.c.available)
        .cte("moved")
    )
    # A row's balance after: the balance after the batch, less the movements after the row's.
    this_and_later = func.sum(source.c.move_available).over(
        partition_by=source.c.move_account, order_by=source.c.position.desc()
    )
    balance_after = moved.c.available - this_and_later + source.c.move_available
    made = (
        select(source, balance_after.label("balance_after"))
        .join(moved, moved.c.account_id == source.c.move_account)
        .cte("made")
    )
    entries = select(
        *(made.c[param.key] for param in _ENTRY_VALUES),
        made.c.balance_after,
        *(made.c[param.key] for param in _ENTRY_TAIL),
    )
    names = [c.name for c in ledger_entries.c]
    return made, ledger_entries.insert().from_select(names, entries).cte("entries")


def _reserve_many_statement() -> Select[Any]:
    """Records the holds whose reference holds nothing yet, with their entries, for the
    accounts that can pay for all of theirs; answers the references of the holds made."""
    asked = _rows_of(*_HOLD.values(), *_MOVEMENT)
    unheld = ~exists().where(holds.c.reference == asked.c.hold_reference)
    made, entries = _moved_many(select(asked).where(unheld).cte("unheld"))
    held = holds.insert().from_select(list(_HOLD), select(*(made.c[p.key] for p in _HOLD.values())))
    return select(made.c.hold_reference).add_cte(held.cte("held"), entries)


def _resolve_many_statement() -> Select[Any]:
    """Resolves the holds still held, returns their credits and records the entries; answers
    the holds resolved."""
    asked = _rows_of(_HOLD["reference"], *_RESOLUTION.values(), *_MOVEMENT)
    resolved = (
        update(holds)
        .where(holds.c.reference == asked.c.hold_reference, holds.c.state == HoldState.HELD.value)
        .values({name: asked.c[param.key] for name, param in _RESOLUTION.items()})
        .returning(*holds.c, *(asked.c[param.key] for param in _MOVEMENT), asked.c.position)
        .cte("resolved")
    )
    made, entries = _moved_many(resolved)
    return select(*(made.c[c.name] for c in holds.c)).add_cte(entries)


_RESERVE_MANY = _Hot(_reserve_many_statement())
_RESOLVE_MANY = _Hot(_resolve_many_statement())
_HOLDS_OF = _Hot(
    select(holds).where(
        holds.c.reference == any_(bindparam("hold_references", type_=ARRAY(String)))
    )
)


class BillingStore:
    """The billing database. Reads run in autocommit (`engine.connect()`), and so do the
    batches of Reserves and resolutions on PostgreSQL (`statements_alone`): no BEGIN and COMMIT
    round trips around statements that are atomic alone."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._fused = engine.dialect.name == "postgresql"
        self._reserves = Batcher(self._reserve_batch)
        self._resolutions = Batcher(self._resolve_batch)

    async def get_balance(self, account_id: str) -> Balance:
        """The account's credits; an account billing has never seen has none."""
        async with self.engine.connect() as connection:
            return await _get_balance(connection, account_id)

    async def reserve(self, hold: Hold) -> Hold:
        """Records the hold and takes its credits, or answers the hold already under its
        reference; raises insufficient credits when there is none and the account cannot pay.
        Concurrent Reserves go to the database together (core/batching.py)."""
        return await self._reserves.submit(hold)

    async def find_hold(self, reference: str) -> Hold | None:
        async with self.engine.connect() as connection:
            return await _find_hold(connection, reference)

    async def get_hold(self, reference: str) -> Hold:
        async with self.engine.connect() as connection:
            return await _get_hold(connection, reference)

    async def reserve_all(self, drafts: Sequence[Hold]) -> list[Outcome[Hold]]:
        """What `reserve` answers each, or the error it raises."""
        return await self._reserves.submit_all(drafts)

    async def resolve_hold(self, asked: "Resolving") -> Hold:
        """Resolves the held hold as asked; a hold resolved before is answered as it is.
        Concurrent resolutions go to the database together (core/batching.py)."""
        return await self._resolutions.submit(asked)

    async def resolve_all(self, asked: Sequence["Resolving"]) -> list[Outcome[Hold]]:
        """What `resolve_hold` answers each, or the error it raises."""
        return await self._resolutions.submit_all(asked)

    async def held_credits(self, now: datetime) -> tuple[int, int]:
        """Credits held over every account (holds not yet captured, released or expired), and
        of those the credits of holds past their expiry, which the sweeper has yet to release."""
        overdue = case((holds.c.expires_at <= now, holds.c.amount), else_=0)
        query = select(
            func.coalesce(func.sum(holds.c.amount), 0), func.coalesce(func.sum(overdue), 0)
        ).where(holds.c.state == HoldState.HELD)
        async with self.engine.connect() as connection:
            held, past_expiry = (await connection.execute(query)).one()
        return int(held), int(past_expiry)

    async def expire_holds(self, now: datetime) -> list[Hold]:
        """Expires every hold still held past its expiry, returning its credits; answers those."""
        overdue = select(holds.c.reference).where(
            holds.c.state == HoldState.HELD, holds.c.expires_at <= now
        )
        async with self.engine.connect() as connection:
            references = (await connection.execute(overdue)).scalars().all()
        expiry = [Resolving(reference, lambda _: domain.EXPIRY, now) for reference in references]
        ended = [await self.resolve_hold(asked) for asked in expiry]
        return [hold for hold in ended if hold.state is HoldState.EXPIRED]

    async def grant(self, movement: Movement, now: datetime) -> LedgerEntry:
        """Adds (or, adjusting, takes) credits; a movement with a reference already made
        answers the first entry."""
        async with self.engine.begin() as connection:
            await _lock_balance(connection, movement.account_id)
            earlier = await _find_entry(connection, movement) if movement.reference else None
            return earlier or await _apply(connection, movement, now)

    async def list_ledger_entries(
        self, account_id: str, limit: int, before_id: str
    ) -> list[LedgerEntry]:
        """The account's entries, newest first, older than `before_id` when it is set."""
        query = select(ledger_entries).where(ledger_entries.c.account_id == account_id)
        if before_id:
            query = query.where(ledger_entries.c.id < before_id)
        async with self.engine.connect() as connection:
            rows = await connection.execute(query.order_by(ledger_entries.c.id.desc()).limit(limit))
        return [_entry(row) for row in rows]

    async def find_subscription(self, account_id: str) -> Subscription | None:
        async with self.engine.connect() as connection:
            return await _find_subscription(connection, account_id)

    async def due_subscriptions(self, now: datetime) -> list[Subscription]:
        query = select(subscriptions).where(
            subscriptions.c.status == SubscriptionStatus.ACTIVE,
            subscriptions.c.current_period_end <= now,
        )
        async with self.engine.connect() as connection:
            return [_subscription(row) for row in await connection.execute(query)]

    async def save_subscription(
        self,
        subscription: Subscription,
        expected: Subscription | None,
        refill: Movement | None,
        now: datetime,
    ) -> bool:
        """Writes the subscription, and refills its period's credits, if the account's
        subscription is still `expected`; False when a concurrent change came first.

        The balance row's lock serialises the account's subscription changes on PostgreSQL;
        SQLite serialises every writer already.
        """
        async with self.engine.begin() as connection:
            await _lock_balance(connection, subscription.account_id)
            if await _find_subscription(connection, subscription.account_id) != expected:
                return False
            await _save_subscription(connection, subscription, replace=expected is not None)
            if refill is not None:
                await _apply(connection, refill, now)
        return True

    def _unit(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """Where a batch of Reserves or of resolutions runs: on PostgreSQL each of its
        statements atomic alone, on SQLite one transaction."""
        return statements_alone(self.engine)

    def _many(self, batch: Sequence[object]) -> bool:
        """Whether the batch goes to PostgreSQL in one statement: a call alone costs it less
        CPU one by one."""
        return self._fused and len(batch) > 1

    async def _reserve_batch(self, drafts: Sequence[Hold]) -> list[Outcome[Hold]]:
        """Each Reserve's answer. On PostgreSQL a batch's live holds are made in one statement
        first; the rest go one by one, in order: those it could not make (their reference
        holds credits already, or their account cannot pay for all of its holds in the batch)
        get the exact answer of a Reserve alone."""
        async with self._unit() as connection:
            if not self._fused:
                return await self._reserve_in_turn(connection, drafts)
            made = await _reserve_many(connection, drafts) if self._many(drafts) else {}
            return [
                hold
                if made.get(hold.reference) is hold
                else await self._reserve_one(connection, hold)
                for hold in drafts
            ]

    async def _reserve_in_turn(
        self, connection: AsyncConnection, drafts: Sequence[Hold]
    ) -> list[Outcome[Hold]]:
        """A batch on SQLite, in its one transaction: each live hold takes its credits in turn
        (one statement each), and the holds and entries of those taken are recorded together
        after them, two statements whatever the batch's size. A reference seen earlier in the
        batch is answered after those, as a Reserve alone would be."""
        taken: list[dict[str, Any]] = []
        references: set[str] = set()
        outcomes: list[Outcome[Hold] | None] = []
        for hold in drafts:
            repeated = hold.reference in references
            outcomes.append(None if repeated else await self._reserve_one(connection, hold, taken))
            references.add(hold.reference)
        if taken:
            await connection.execute(_ADD_HOLD.statement, taken)
            await connection.execute(_ADD_ENTRY, taken)
        return [
            await self._reserve_one(connection, hold) if outcome is None else outcome
            for hold, outcome in zip(drafts, outcomes, strict=True)
        ]

    async def _reserve_one(
        self, connection: AsyncConnection, hold: Hold, taken: list[dict[str, Any]] | None = None
    ) -> Outcome[Hold]:
        """Of concurrent Reserves with one reference, the losers' inserts conflict with the
        winner's hold, so their statements roll back, credits included. `taken`: see `_hold`."""
        try:
            made = await self._hold(connection, hold, taken)
        except (IntegrityError, asyncpg.UniqueViolationError):
            made = False
        return hold if made else await _unmade(connection, hold)

    async def _resolve_batch(self, asked: Sequence["Resolving"]) -> list[Outcome[Hold]]:
        """Each resolution's answer. On PostgreSQL a batch's live holds are resolved in one
        statement first; the rest go one by one, in order. On SQLite, whose batch is one
        transaction, the entries of the batch's resolutions are recorded together at its end
        (none of them reads an entry)."""
        async with self._unit() as connection:
            settled = await _resolve_many(connection, asked) if self._many(asked) else {}
            entries: list[dict[str, Any]] | None = None if self._fused else []
            outcomes = [
                settled[index]
                if index in settled
                else await self._resolve_one(connection, one, entries)
                for index, one in enumerate(asked)
            ]
            if entries:
                await connection.execute(_ADD_ENTRY, entries)
            return outcomes

    async def _resolve_one(
        self,
        connection: AsyncConnection,
        asked: "Resolving",
        entries: list[dict[str, Any]] | None,
    ) -> Outcome[Hold]:
        hold = await _find_hold(connection, asked.reference)
        decided = _decided(asked, hold)
        if hold is None or not isinstance(decided, Resolution):
            return decided
        resolved = await self._resolve(connection, hold, decided, asked.now, entries)
        if resolved is None:  # a concurrent call resolved it first
            return await _get_hold(connection, asked.reference)
        _count_resolved(resolved)
        return resolved

    async def _hold(
        self, connection: AsyncConnection, hold: Hold, taken: list[dict[str, Any]] | None = None
    ) -> bool:
        """Records the hold and takes a live hold's credits; False, changing nothing, when the
        reference holds credits already or the account cannot pay. A live hold on SQLite whose
        credits were taken waits in `taken`, when given, to be recorded with its entry by the
        caller before it commits; a free one is recorded at once (its insert checks its
        reference)."""
        params = _hold_params(hold)
        if not hold.livemode:
            await _ADD_HOLD.run(connection, params)
            return True
        params |= _movement_params(domain.hold_movement(hold), hold.created_at)
        if self._fused:
            return await _FUSED_RESERVE.first(connection, params) is not None
        available = (await connection.execute(_MOVE_UNLESS_HELD, params)).scalar()
        if available is None:
            return False
        made = {**params, "entry_balance_after": available}
        if taken is not None:
            taken.append(made)
            return True
        await _ADD_HOLD.run(connection, made)
        await connection.execute(_ADD_ENTRY, made)
        return True

    async def _resolve(
        self,
        connection: AsyncConnection,
        hold: Hold,
        resolution: Resolution,
        now: datetime,
        entries: list[dict[str, Any]] | None,
    ) -> Hold | None:
        """None when a concurrent call resolved the hold first: only a held hold changes.
        `entries`: where the movement's entry waits to be recorded, if it waits."""
        params = _resolution_params(hold, resolution, now)
        if not hold.livemode:
            row = await _RESOLVE.first(connection, params)
        elif self._fused:
            row = await _FUSED_RESOLUTION.first(connection, params)
        else:
            row = await _RESOLVE.first(connection, params)
            if row is not None:
                movement = domain.resolution_movement(hold, resolution)
                await _apply(connection, movement, now, entries)
        return None if row is None else _hold(row)


@dataclass(frozen=True)
class Resolving:
    """A resolution asked for: of the hold under `reference`, as `decide` says, at `now`."""

    reference: str
    decide: Callable[[Hold], Resolution]
    now: datetime


def _decided(asked: Resolving, hold: Hold | None) -> Resolution | Outcome[Hold]:
    """A held hold's resolution; a hold resolved before, as it is; or the error to answer."""
    try:
        if hold is None:
            return _no_hold(asked.reference)
        return asked.decide(hold) if hold.state is HoldState.HELD else hold
    except DomainError as error:
        return error


def _count_resolved(hold: Hold) -> None:
    """Counted once, by the call that resolved the hold."""
    metrics.CREDITS_CAPTURED.labels("billing").inc(hold.captured_amount)
    metrics.CREDITS_RELEASED.labels("billing").inc(hold.amount - hold.captured_amount)


async def _unmade(connection: AsyncConnection, hold: Hold) -> Outcome[Hold]:
    """The answer to a Reserve whose hold was not made: the hold its reference made before, or
    the account's credits fall short."""
    earlier = await _find_hold(connection, hold.reference)
    if earlier is not None:
        return earlier
    available = (await _get_balance(connection, hold.account_id)).available
    return domain.insufficient_credits(hold.amount, available)


async def _reserve_many(connection: AsyncConnection, drafts: Sequence[Hold]) -> dict[str, Hold]:
    """The live holds (the first of each reference) that one statement made, by reference;
    none when a concurrent call took one of their references first, or a deadlock broke it."""
    firsts: dict[str, Hold] = {}
    for hold in drafts:
        if hold.livemode:
            firsts.setdefault(hold.reference, hold)
    if not firsts:
        return {}
    rows = [
        _hold_params(hold) | _movement_params(domain.hold_movement(hold), hold.created_at)
        for hold in firsts.values()
    ]
    try:
        made = await _RESERVE_MANY.all(connection, _columns(rows))
    except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
        return {}
    return {row["hold_reference"]: firsts[row["hold_reference"]] for row in made}


async def _resolve_many(
    connection: AsyncConnection, asked: Sequence[Resolving]
) -> dict[int, Outcome[Hold]]:
    """The answers, by position in `asked`, that one read of the holds and one statement
    settle: of the first resolution of each reference, unless its hold is in test mode or a
    concurrent call resolved it between the two."""
    firsts: dict[str, int] = {}
    for index, one in enumerate(asked):
        firsts.setdefault(one.reference, index)
    found = await _HOLDS_OF.all(connection, {"hold_references": list(firsts)})
    holds_found = {row["reference"]: _hold(row) for row in found}
    settled: dict[int, Outcome[Hold]] = {}
    resolving: dict[str, tuple[int, dict[str, Any]]] = {}
    for reference, index in firsts.items():
        hold = holds_found.get(reference)
        decided = _decided(asked[index], hold)
        if hold is None or not isinstance(decided, Resolution):
            settled[index] = decided
        elif hold.livemode:
            resolving[reference] = (index, _resolution_params(hold, decided, asked[index].now))
    if not resolving:
        return settled
    try:
        rows = await _RESOLVE_MANY.all(connection, _columns([p for _, p in resolving.values()]))
    except asyncpg.DeadlockDetectedError:
        return settled
    for row in rows:
        resolved = _hold(row)
        _count_resolved(resolved)
        settled[resolving[resolved.reference][0]] = resolved
    return settled


def _resolution_params(hold: Hold, resolution: Resolution, now: datetime) -> dict[str, Any]:
    """The parameters of `_RESOLVE`, and for a live hold those of its movement."""
    params = {
        "hold_reference": hold.reference,
        "resolve_state": resolution.state.value,
        "resolve_captured": resolution.captured,
        "resolve_time": now,
    }
    if hold.livemode:
        params |= _movement_params(domain.resolution_movement(hold, resolution), now)
    return params


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A batch's parameters: the values of each of its rows' parameters, in order."""
    return {name: [row[name] for row in rows] for name in rows[0]}


async def _get_balance(connection: AsyncConnection, account_id: str) -> Balance:
    row = (await connection.execute(_balance_of(account_id))).first()
    return Balance(account_id, 0, 0) if row is None else Balance(**row._mapping)


async def _apply(
    connection: AsyncConnection,
    movement: Movement,
    now: datetime,
    entries: list[dict[str, Any]] | None = None,
) -> LedgerEntry:
    """Moves the credits and appends their entry, in the caller's transaction: at once, or to
    `entries`, which the caller records before it commits.

    The availability check and the change are one statement, so concurrent movements can never
    take available credits below zero.
    """
    params = _movement_params(movement, now)
    available = (await connection.execute(_MOVE, params)).scalar()
    if available is None:
        balance = (await connection.execute(_balance_of(movement.account_id))).first()
        available = balance.available if balance else 0
        raise domain.insufficient_credits(-movement.available, available, str(movement.kind))
    entry = {**params, "entry_balance_after": available}
    if entries is None:
        await connection.execute(_ADD_ENTRY, entry)
    else:
        entries.append(entry)
    return LedgerEntry(
        id=params["entry_id"],
        account_id=movement.account_id,
        kind=movement.kind,
        amount=movement.available,
        balance_after=available,
        reference=movement.reference,
        description=movement.description,
        created_at=now,
    )


def _movement_params(movement: Movement, now: datetime) -> dict[str, Any]:
    """The parameters of `_MOVE` and of the movement's entry."""
    return {
        "move_account": movement.account_id,
        "move_available": movement.available,
        "move_reserved": movement.reserved,
        "entry_id": new_id("ledg"),
        "entry_kind": movement.kind.value,
        "entry_reference": movement.reference,
        "entry_description": movement.description,
        "entry_created_at": now,
    }


def _hold_params(hold: Hold) -> dict[str, Any]:
    return {f"hold_{field.name}": getattr(hold, field.name) for field in fields(hold)}


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
    row = await _GET_HOLD.first(connection, {"hold_reference": reference})
    return None if row is None else _hold(row)


async def _get_hold(connection: AsyncConnection, reference: str) -> Hold:
    hold = await _find_hold(connection, reference)
    if hold is None:
        raise _no_hold(reference)
    return hold


def _no_hold(reference: str) -> NotFound:
    return NotFound("HOLD_NOT_FOUND", f"no hold with the reference {reference}")


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
    return None if row is None else _subscription(row)


async def _save_subscription(
    connection: AsyncConnection, subscription: Subscription, *, replace: bool
) -> None:
    values = asdict(subscription)
    if replace:
        owned = subscriptions.c.account_id == subscription.account_id
        await connection.execute(update(subscriptions).where(owned).values(values))
    else:
        await connection.execute(subscriptions.insert().values(values))


def _hold(fields: dict[str, Any]) -> Hold:
    return Hold(**{**fields, "state": HoldState(fields["state"])})


def _entry(row: Row[Any]) -> LedgerEntry:
    return LedgerEntry(**{**row_fields(row), "kind": EntryKind(row.kind)})


def _subscription(row: Row[Any]) -> Subscription:
    return Subscription(**{**row_fields(row), "status": SubscriptionStatus(row.status)})
