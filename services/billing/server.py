"""The BillingService servicer and the billing Service that runs it with its hold sweeper."""

import asyncio
import contextlib
from datetime import timedelta

import grpc
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import paging
from magicpixels.core.server import ServiceBinding
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import BillingSettings
from magicpixels.core.timestamps import to_timestamp, utcnow
from magicpixels.services.billing import domain, store
from magicpixels.services.billing.domain import (
    Hold,
    HoldState,
    LedgerEntry,
    Plan,
    Price,
    Subscription,
)

SERVICE_NAME = billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name
SWEEP_INTERVAL_SECONDS = 60.0
_MIGRATIONS = "magicpixels.services.billing.migrations"

log = structlog.get_logger("magicpixels.billing")


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, engine: AsyncEngine, hold_timeout: timedelta) -> None:
        self._engine = engine
        self._hold_timeout = hold_timeout

    async def Quote(
        self, request: billing_pb2.QuoteRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.QuoteResponse:
        account_id = domain.required(request.account_id, "account_id")
        cost = _cost(request.usage, request.livemode)
        available = (await store.get_balance(self._engine, account_id)).available
        return billing_pb2.QuoteResponse(
            cost_credits=cost, available_credits=available, sufficient=cost <= available
        )

    async def Reserve(
        self, request: billing_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Hold:
        account_id = domain.required(request.account_id, "account_id")
        draft = domain.new_hold(
            account_id,
            domain.checked_reference(request.reference),
            _cost(request.usage, request.livemode),
            request.livemode,
            utcnow(),
            self._hold_timeout,
        )
        hold = await store.reserve(self._engine, draft)
        return _hold_message(domain.owned(hold, account_id))

    async def Capture(
        self, request: billing_pb2.CaptureRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Hold:
        """Spends `amount` of the hold (all of it when absent) and returns the rest.

        Like every entry's, the CAPTURE entry's amount is the change of available credits: what
        the capture gives back, hold minus captured (0 for a whole capture).
        """
        amount = request.amount if request.HasField("amount") else None
        hold = await store.resolve_hold(
            self._engine,
            domain.checked_reference(request.reference),
            lambda held: domain.capture(held, amount),
            utcnow(),
        )
        return _hold_message(domain.resolved_as(hold, HoldState.CAPTURED))

    async def Release(
        self, request: billing_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Hold:
        hold = await store.resolve_hold(
            self._engine,
            domain.checked_reference(request.reference),
            lambda _: domain.RELEASE,
            utcnow(),
        )
        return _hold_message(domain.resolved_as(hold, HoldState.RELEASED))

    async def Grant(
        self, request: billing_pb2.GrantRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.LedgerEntry:
        movement = domain.grant_movement(
            domain.required(request.account_id, "account_id"),
            domain.positive_amount(request.amount),
            request.description,
            domain.optional_reference(request.reference),
        )
        return _entry_message(await store.grant(self._engine, movement, utcnow()))

    async def GetBalance(
        self, request: billing_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Balance:
        account_id = domain.required(request.account_id, "account_id")
        balance = await store.get_balance(self._engine, account_id)
        return billing_pb2.Balance(
            account_id=account_id, available=balance.available, reserved=balance.reserved
        )

    async def ListLedgerEntries(
        self, request: billing_pb2.ListLedgerEntriesRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListLedgerEntriesResponse:
        account_id = domain.required(request.account_id, "account_id")
        size = paging.page_size(request.page_size)
        entries = await store.list_ledger_entries(
            self._engine, account_id, size + 1, request.page_token
        )
        found, next_page_token = paging.page(entries, size)
        return billing_pb2.ListLedgerEntriesResponse(
            ledger_entries=[_entry_message(entry) for entry in found],
            next_page_token=next_page_token,
        )

    async def ListPrices(
        self, request: billing_pb2.ListPricesRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListPricesResponse:
        return billing_pb2.ListPricesResponse(prices=[_price_message(p) for p in domain.PRICES])

    async def ListPlans(
        self, request: billing_pb2.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListPlansResponse:
        return billing_pb2.ListPlansResponse(plans=[_plan_message(p) for p in domain.PLANS])

    async def Subscribe(
        self, request: billing_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Subscription:
        account_id = domain.required(request.account_id, "account_id")
        plan = domain.plan_of(request.plan_id)
        subscription = await store.subscribe(self._engine, account_id, plan, utcnow())
        return _subscription_message(subscription)


def _cost(usage: billing_pb2.Usage, livemode: bool) -> int:
    return domain.cost(usage.mode, usage.duration_seconds, livemode=livemode)


def _hold_message(hold: Hold) -> billing_pb2.Hold:
    return billing_pb2.Hold(
        reference=hold.reference,
        account_id=hold.account_id,
        amount=hold.amount,
        captured_amount=hold.captured_amount,
        state=billing_pb2.HoldState.Value(f"HOLD_STATE_{hold.state.name}"),
        livemode=hold.livemode,
        create_time=to_timestamp(hold.created_at),
        expire_time=to_timestamp(hold.expires_at),
        resolve_time=to_timestamp(hold.resolved_at),
    )


def _entry_message(entry: LedgerEntry) -> billing_pb2.LedgerEntry:
    return billing_pb2.LedgerEntry(
        id=entry.id,
        account_id=entry.account_id,
        kind=billing_pb2.LedgerEntryKind.Value(f"LEDGER_ENTRY_KIND_{entry.kind.name}"),
        amount=entry.amount,
        balance_after=entry.balance_after,
        reference=entry.reference or "",
        description=entry.description,
        create_time=to_timestamp(entry.created_at),
    )


def _price_message(price: Price) -> billing_pb2.Price:
    return billing_pb2.Price(
        mode=price.mode,
        credits=price.credits,
        unit=billing_pb2.PriceUnit.Value(f"PRICE_UNIT_{price.unit.name}"),
        unit_block=price.unit_block,
        description=price.description,
    )


def _plan_message(plan: Plan) -> billing_pb2.Plan:
    return billing_pb2.Plan(
        id=plan.id,
        name=plan.name,
        credits_per_period=plan.credits_per_period,
        period_days=plan.period_days,
        price_cents=plan.price_cents,
        currency=plan.currency,
    )


def _subscription_message(subscription: Subscription) -> billing_pb2.Subscription:
    return billing_pb2.Subscription(
        account_id=subscription.account_id,
        plan_id=subscription.plan_id,
        current_period_start_time=to_timestamp(subscription.current_period_start),
        current_period_end_time=to_timestamp(subscription.current_period_end),
    )


async def sweep_holds(
    engine: AsyncEngine, interval_seconds: float = SWEEP_INTERVAL_SECONDS
) -> None:
    """Expires overdue holds now and every interval until cancelled; a failed sweep is logged
    and the next one tries again."""
    while True:
        try:
            await store.expire_holds(engine, utcnow())
        except Exception:  # the sweeper must outlive any one failure
            log.exception("hold_sweep_failed")
        await asyncio.sleep(interval_seconds)


class BillingService:
    name = "billing"

    def __init__(self, mesh: Mesh, settings: BillingSettings) -> None:
        self.settings = settings
        self._mesh = mesh
        self._engine: AsyncEngine | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> list[ServiceBinding]:
        self._engine = await open_database(
            self._mesh.settings, self.settings, self.name, _MIGRATIONS
        )
        self._sweeper = asyncio.create_task(sweep_holds(self._engine), name="billing-hold-sweeper")
        servicer = BillingServicer(
            self._engine, timedelta(seconds=self.settings.hold_timeout_seconds)
        )
        return [
            ServiceBinding(
                SERVICE_NAME, servicer, billing_pb2_grpc.add_BillingServiceServicer_to_server
            )
        ]

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._engine is not None:
            await self._engine.dispose()
