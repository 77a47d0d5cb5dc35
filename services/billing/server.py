"""The BillingService servicer and the billing Service that runs it with its sweeper."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
import structlog

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import eventloop, metrics, paging
from magicpixels.core.errors import INTERNAL_ERROR, DomainError, InvalidArgument
from magicpixels.core.holds import MAX_BATCH
from magicpixels.core.server import ServiceBinding
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import BillingSettings
from magicpixels.core.timestamps import to_timestamp, utcnow
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import (
    Hold,
    HoldState,
    LedgerEntry,
    Plan,
    PlanCatalog,
    Price,
    Subscription,
)
from magicpixels.services.billing.payments import OperatorPayments
from magicpixels.services.billing.store import BillingStore, Resolving
from magicpixels.services.billing.subscriptions import Subscriptions

SERVICE_NAME = billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name
MIGRATIONS = "magicpixels.services.billing.migrations"

log = structlog.get_logger("magicpixels.billing")

Asked = TypeVar("Asked")
Result = TypeVar("Result")
# What a request asks the store, and how the hold the store answers is answered to the caller.
Asking = tuple[Asked, Callable[[Hold], billing_pb2.Hold]]


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(
        self, store: BillingStore, subscriptions: Subscriptions, hold_timeout: timedelta
    ) -> None:
        self._store = store
        self._subscriptions = subscriptions
        self._hold_timeout = hold_timeout

    async def Quote(
        self, request: billing_pb2.QuoteRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.QuoteResponse:
        account_id = domain.required(request.account_id, "account_id")
        cost = domain.cost(
            request.usage.mode, request.usage.duration_seconds, livemode=request.livemode
        )
        available = (await self._store.get_balance(account_id)).available
        return billing_pb2.QuoteResponse(
            cost_credits=cost, available_credits=available, sufficient=cost <= available
        )

    async def Reserve(
        self, request: billing_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Hold:
        draft, answer = self._reserving(request)
        return answer(await self._store.reserve(draft))

    async def Capture(
        self, request: billing_pb2.CaptureRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Hold:
        asked, answer = self._capturing(request)
        return answer(await self._store.resolve_hold(asked))

    async def Release(
        self, request: billing_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Hold:
        asked, answer = self._releasing(request)
        return answer(await self._store.resolve_hold(asked))

    async def BatchReserve(
        self, request: billing_pb2.BatchReserveRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BatchReserveResponse:
        results = await _each(request, self._reserving, self._store.reserve_all)
        return billing_pb2.BatchReserveResponse(results=results)

    async def BatchCapture(
        self, request: billing_pb2.BatchCaptureRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BatchCaptureResponse:
        results = await _each(request, self._capturing, self._store.resolve_all)
        return billing_pb2.BatchCaptureResponse(results=results)

    async def BatchRelease(
        self, request: billing_pb2.BatchReleaseRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BatchReleaseResponse:
        results = await _each(request, self._releasing, self._store.resolve_all)
        return billing_pb2.BatchReleaseResponse(results=results)

    # What each of Reserve, Capture and Release asks the store, and how it answers the hold the
    # store gives back: a call alone and a batch's requests go the same way.

    def _reserving(self, request: billing_pb2.ReserveRequest) -> Asking[Hold]:
        draft = domain.new_hold(
            domain.required(request.account_id, "account_id"),
            domain.checked_reference(request.reference),
            request.usage.mode,
            request.usage.duration_seconds,
            livemode=request.livemode,
            now=utcnow(),
            timeout=self._hold_timeout,
        )
        return draft, lambda hold: _hold_message(domain.replayed(hold, draft))

    def _capturing(self, request: billing_pb2.CaptureRequest) -> Asking[Resolving]:
        """Spends `amount` of the hold (all of it when absent) and returns the rest.

        Like every entry's, the CAPTURE entry's amount is the change of available credits: what
        the capture gives back, hold minus captured (0 for a whole capture).
        """
        amount = request.amount if request.HasField("amount") else None
        asked = Resolving(
            domain.checked_reference(request.reference),
            lambda held: domain.capture(held, amount),
            utcnow(),
        )
        return asked, lambda hold: _hold_message(domain.resolved_as(hold, HoldState.CAPTURED))

    def _releasing(self, request: billing_pb2.ReleaseRequest) -> Asking[Resolving]:
        asked = Resolving(
            domain.checked_reference(request.reference), lambda _: domain.RELEASE, utcnow()
        )
        return asked, lambda hold: _hold_message(domain.resolved_as(hold, HoldState.RELEASED))

    async def Grant(
        self, request: billing_pb2.GrantRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.LedgerEntry:
        movement = domain.grant_movement(
            domain.required(request.account_id, "account_id"),
            domain.positive_amount(request.amount),
            request.description,
            domain.optional_reference(request.reference),
        )
        return _entry_message(await self._store.grant(movement, utcnow()))

    async def AdjustCredits(
        self, request: billing_pb2.AdjustCreditsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.LedgerEntry:
        movement = domain.adjustment_movement(
            domain.required(request.account_id, "account_id"),
            request.amount,
            request.description,
            domain.optional_reference(request.reference),
        )
        return _entry_message(await self._store.grant(movement, utcnow()))

    async def GetBalance(
        self, request: billing_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Balance:
        account_id = domain.required(request.account_id, "account_id")
        balance = await self._store.get_balance(account_id)
        return billing_pb2.Balance(
            account_id=account_id, available=balance.available, reserved=balance.reserved
        )

    async def ListLedgerEntries(
        self, request: billing_pb2.ListLedgerEntriesRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListLedgerEntriesResponse:
        account_id = domain.required(request.account_id, "account_id")
        size = paging.page_size(request.page_size)
        entries = await self._store.list_ledger_entries(account_id, size + 1, request.page_token)
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
        plans = self._subscriptions.plans
        return billing_pb2.ListPlansResponse(plans=[_plan_message(plan) for plan in plans])

    async def Subscribe(
        self, request: billing_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Subscription:
        account_id = domain.required(request.account_id, "account_id")
        plan = self._subscriptions.plans.get(request.plan_id)
        return _subscription_message(await self._subscriptions.subscribe(account_id, plan))

    async def GetSubscription(
        self, request: billing_pb2.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Subscription:
        account_id = domain.required(request.account_id, "account_id")
        return _subscription_message(await self._subscriptions.get(account_id))

    async def ApproveSubscription(
        self, request: billing_pb2.ApproveSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Subscription:
        account_id = domain.required(request.account_id, "account_id")
        return _subscription_message(await self._subscriptions.approve(account_id))

    async def CancelSubscription(
        self, request: billing_pb2.CancelSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Subscription:
        account_id = domain.required(request.account_id, "account_id")
        return _subscription_message(await self._subscriptions.cancel(account_id))


BatchRequest = (
    billing_pb2.BatchReserveRequest
    | billing_pb2.BatchCaptureRequest
    | billing_pb2.BatchReleaseRequest
)


async def _each(
    batch: BatchRequest,
    asking: Callable[[Any], Asking[Asked]],
    store_all: Callable[[list[Asked]], Awaitable[list[Hold | BaseException]]],
) -> list[billing_pb2.HoldResult]:
    """Each request's result, in order: its hold, or the status its own call would have failed
    with. The store takes them all at once, as one batch of its own."""
    if len(batch.requests) > MAX_BATCH:  # a bound on the work and memory one call asks for
        message = f"a batch holds at most {MAX_BATCH} requests"
        raise InvalidArgument("PARAMETER_INVALID", message, param="requests")
    asked = [_outcome_of(asking, request) for request in batch.requests]
    valid = [one for one in asked if not isinstance(one, BaseException)]
    stored = iter(await store_all([question for question, _ in valid]) if valid else [])
    outcomes: list[billing_pb2.Hold | BaseException] = []
    for one in asked:
        if isinstance(one, BaseException):  # refused as it was drafted
            outcomes.append(one)
            continue
        _, answer = one
        hold = next(stored)
        outcomes.append(hold if isinstance(hold, BaseException) else _outcome_of(answer, hold))
    return [_hold_result(outcome) for outcome in outcomes]


def _outcome_of(call: Callable[[Any], Result], argument: Any) -> Result | BaseException:
    try:
        return call(argument)
    except Exception as error:  # one request's failure is its own: see _hold_result
        return error


def _hold_result(outcome: billing_pb2.Hold | BaseException) -> billing_pb2.HoldResult:
    if isinstance(outcome, DomainError):
        return billing_pb2.HoldResult(error=outcome.to_proto())
    if isinstance(outcome, asyncio.CancelledError):
        raise outcome
    if isinstance(outcome, BaseException):  # this request's outcome is unknown, not the others'
        log.error("batch_request_failed", exc_info=outcome)
        return billing_pb2.HoldResult(error=INTERNAL_ERROR.to_proto())
    return billing_pb2.HoldResult(hold=outcome)


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
        aliases=price.aliases,
    )


def _plan_message(plan: Plan) -> billing_pb2.Plan:
    return billing_pb2.Plan(**asdict(plan))


def _subscription_message(subscription: Subscription) -> billing_pb2.Subscription:
    return billing_pb2.Subscription(
        id=subscription.id,
        account_id=subscription.account_id,
        plan_id=subscription.plan_id,
        status=billing_pb2.SubscriptionStatus.Value(
            f"SUBSCRIPTION_STATUS_{subscription.status.name}"
        ),
        current_period_start_time=to_timestamp(subscription.current_period_start),
        current_period_end_time=to_timestamp(subscription.current_period_end),
        cancel_at_period_end=subscription.cancel_at_period_end,
        create_time=to_timestamp(subscription.created_at),
        cancel_time=to_timestamp(subscription.canceled_at),
        end_time=to_timestamp(subscription.ended_at),
    )


async def sweep(tasks: list[Callable[[datetime], Awaitable[object]]], interval: float) -> None:
    """Runs each task now and every interval until cancelled; a failed task is logged, the
    others run, and the next sweep tries it again."""
    while True:
        for task in tasks:
            try:
                await task(utcnow())
            except Exception:  # the sweeper must outlive any one failure
                log.exception("sweep_failed", task=task.__name__)
        await asyncio.sleep(interval)


class BillingService:
    name = "billing"

    def __init__(self, mesh: Mesh, settings: BillingSettings) -> None:
        self.settings = settings
        self._mesh = mesh
        self._store: BillingStore | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> list[ServiceBinding]:
        engine = await open_database(self._mesh.settings, self.settings, self.name, MIGRATIONS)
        self._store = BillingStore(engine)
        subscriptions = Subscriptions(
            self._store,
            PlanCatalog(Plan(**plan.model_dump()) for plan in self.settings.plans),
            OperatorPayments(auto_approve=self.settings.auto_approve_subscriptions),
        )
        self._sweeper = asyncio.create_task(
            sweep(
                [self._store.expire_holds, subscriptions.renew_due, self._measure_held],
                self.settings.sweep_interval_seconds,
            ),
            name="billing-sweeper",
        )
        servicer = BillingServicer(
            self._store, subscriptions, timedelta(seconds=self.settings.hold_timeout_seconds)
        )
        return [
            ServiceBinding(
                SERVICE_NAME, servicer, billing_pb2_grpc.add_BillingServiceServicer_to_server
            )
        ]

    async def _measure_held(self, now: datetime) -> None:
        assert self._store is not None
        held, past_expiry = await self._store.held_credits(now)
        metrics.CREDITS_HELD.labels("billing").set(held)
        metrics.CREDITS_HELD_PAST_EXPIRY.labels("billing").set(past_expiry)

    async def close(self) -> None:
        await eventloop.stopped(self._sweeper)
        if self._store is not None:
            await self._store.engine.dispose()
