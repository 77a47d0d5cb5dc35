"""The rules of credits: the price table, the plans, holds and what each operation moves.

Every change of an account's credits is a `Movement`: a signed change of its available and of
its reserved credits, written as one ledger entry whose `amount` is the change of available.
So an account's available credits always equal the sum of its entries' amounts:

| operation | available | reserved |
|---|---|---|
| grant, subscription refill | + amount | 0 |
| hold (Reserve) | - cost | + cost |
| capture of `captured` credits | + (cost - captured), what is given back | - cost |
| release, expiry | + cost | - cost |
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from magicpixels.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument

MAX_ID_LENGTH = 64
MAX_REFERENCE_LENGTH = 255


class PriceUnit(StrEnum):
    JOB = "job"
    SECOND = "second"


class HoldState(StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class EntryKind(StrEnum):
    GRANT = "grant"
    SUBSCRIPTION_REFILL = "subscription_refill"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRY = "expiry"


@dataclass(frozen=True)
class Price:
    """`credits` per started block of `unit_block` units."""

    mode: str
    credits: int
    unit: PriceUnit
    unit_block: int
    description: str

    def cost(self, duration_seconds: float) -> int:
        if self.unit is PriceUnit.JOB:
            return self.credits
        return self.credits * math.ceil(duration_seconds / self.unit_block)


PRICES: tuple[Price, ...] = (
    Price("text_to_image", 1, PriceUnit.JOB, 1, "1 credit per image"),
    Price("image_to_image", 1, PriceUnit.JOB, 1, "1 credit per image"),
    Price("text_to_audio", 1, PriceUnit.SECOND, 10, "1 credit per started 10 seconds of audio"),
    Price("image_to_video", 22, PriceUnit.SECOND, 1, "22 credits per started second of video"),
)
MODE_ALIASES = {"audio": "text_to_audio"}
_PRICES_BY_MODE = {price.mode: price for price in PRICES}


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    credits_per_period: int
    period_days: int
    price_cents: int
    currency: str


PLANS: tuple[Plan, ...] = (
    Plan("free", "Free", 0, 30, 0, "USD"),
    Plan("starter", "Starter", 500, 30, 900, "USD"),
    Plan("pro", "Pro", 2500, 30, 3900, "USD"),
)
_PLANS_BY_ID = {plan.id: plan for plan in PLANS}


@dataclass(frozen=True)
class Balance:
    account_id: str
    available: int
    reserved: int


@dataclass(frozen=True)
class Hold:
    reference: str
    account_id: str
    amount: int
    captured_amount: int
    state: HoldState
    livemode: bool
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None = None


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    account_id: str
    kind: EntryKind
    amount: int
    balance_after: int
    reference: str | None
    description: str
    created_at: datetime


@dataclass(frozen=True)
class Subscription:
    account_id: str
    plan_id: str
    current_period_start: datetime
    current_period_end: datetime


@dataclass(frozen=True)
class Movement:
    """A change of an account's available and reserved credits, recorded as one entry."""

    account_id: str
    kind: EntryKind
    available: int
    reserved: int
    reference: str | None
    description: str


@dataclass(frozen=True)
class Resolution:
    """How a held hold ends: its new state and how many of its credits are spent."""

    state: HoldState
    kind: EntryKind
    captured: int = 0


RELEASE = Resolution(HoldState.RELEASED, EntryKind.RELEASE)
EXPIRY = Resolution(HoldState.EXPIRED, EntryKind.EXPIRY)


def price_of(mode: str) -> Price:
    price = _PRICES_BY_MODE.get(MODE_ALIASES.get(mode, mode))
    if price is None:
        known = ", ".join(_PRICES_BY_MODE)
        raise InvalidArgument(
            "MODE_UNKNOWN", f"unknown mode {mode!r}; known: {known}", param="mode"
        )
    return price


def cost(mode: str, duration_seconds: float, *, livemode: bool) -> int:
    """The credits a job costs; test mode costs nothing but is priced to check the usage."""
    price = price_of(mode)
    if price.unit is PriceUnit.SECOND and not (
        math.isfinite(duration_seconds) and duration_seconds > 0
    ):
        message = f"duration_seconds must be a positive number for {price.mode}"
        raise InvalidArgument("PARAMETER_INVALID", message, param="duration_seconds")
    return price.cost(duration_seconds) if livemode else 0


def plan_of(plan_id: str) -> Plan:
    plan = _PLANS_BY_ID.get(plan_id)
    if plan is None:
        known = ", ".join(_PLANS_BY_ID)
        raise InvalidArgument(
            "PLAN_UNKNOWN", f"unknown plan {plan_id!r}; known: {known}", param="plan_id"
        )
    return plan


def required(value: str, param: str, max_length: int = MAX_ID_LENGTH) -> str:
    if not value:
        raise InvalidArgument("PARAMETER_MISSING", f"{param} is required", param=param)
    if len(value) > max_length:
        message = f"{param} must be at most {max_length} characters"
        raise InvalidArgument("PARAMETER_INVALID", message, param=param)
    return value


def checked_reference(value: str) -> str:
    return required(value, "reference", MAX_REFERENCE_LENGTH)


def optional_reference(value: str) -> str | None:
    return checked_reference(value) if value else None


def positive_amount(amount: int) -> int:
    if amount <= 0:
        raise InvalidArgument(
            "PARAMETER_INVALID", "amount must be a positive number of credits", param="amount"
        )
    return amount


def new_hold(
    account_id: str, reference: str, amount: int, livemode: bool, now: datetime, timeout: timedelta
) -> Hold:
    return Hold(reference, account_id, amount, 0, HoldState.HELD, livemode, now, now + timeout)


def owned(hold: Hold, account_id: str) -> Hold:
    """The hold Reserve answers; a reference is one job's, so another account cannot reuse it."""
    if hold.account_id != account_id:
        message = f"the reference {hold.reference} holds credits of another account"
        raise AlreadyExists("HOLD_REFERENCE_CONFLICT", message)
    return hold


def capture(hold: Hold, amount: int | None) -> Resolution:
    captured = hold.amount if amount is None else amount
    if not 0 <= captured <= hold.amount:
        message = f"the capture amount must be between 0 and the {hold.amount} credits held"
        raise InvalidArgument("PARAMETER_INVALID", message, param="amount")
    return Resolution(HoldState.CAPTURED, EntryKind.CAPTURE, captured)


def resolved_as(hold: Hold, wanted: HoldState) -> Hold:
    """A resolved hold answered to a request for `wanted`: the same outcome, or a refusal.

    Releasing an expired hold is the same outcome: its credits are already back.
    """
    if hold.state is wanted or (wanted is HoldState.RELEASED and hold.state is HoldState.EXPIRED):
        return hold
    message = f"the hold {hold.reference} is already {hold.state}"
    raise FailedPrecondition("HOLD_ALREADY_RESOLVED", message)


def hold_movement(hold: Hold) -> Movement:
    description = f"{hold.amount} credits held for {hold.reference}"
    return Movement(
        hold.account_id, EntryKind.HOLD, -hold.amount, hold.amount, hold.reference, description
    )


def resolution_movement(hold: Hold, resolution: Resolution) -> Movement:
    returned = hold.amount - resolution.captured
    description = (
        f"{resolution.state} {hold.reference}: {returned} of {hold.amount} credits returned"
    )
    return Movement(
        hold.account_id, resolution.kind, returned, -hold.amount, hold.reference, description
    )


def grant_movement(
    account_id: str,
    amount: int,
    description: str,
    reference: str | None,
    kind: EntryKind = EntryKind.GRANT,
) -> Movement:
    return Movement(account_id, kind, amount, 0, reference, description)


def insufficient_credits(cost: int, available: int) -> FailedPrecondition:
    message = f"this job needs {cost} credits, {available} available"
    return FailedPrecondition("INSUFFICIENT_CREDITS", message)


def next_period(account_id: str, plan: Plan, now: datetime) -> Subscription:
    return Subscription(account_id, plan.id, now, now + timedelta(days=plan.period_days))


def is_current(subscription: Subscription, plan: Plan, now: datetime) -> bool:
    """Subscribing again to the plan of the running period changes nothing."""
    return subscription.plan_id == plan.id and subscription.current_period_end > now


def refill_movement(subscription: Subscription, plan: Plan) -> Movement:
    reference = f"{plan.id}:{subscription.current_period_start.isoformat()}"
    description = f"{plan.name} plan: {plan.credits_per_period} credits for the period"
    return grant_movement(
        subscription.account_id,
        plan.credits_per_period,
        description,
        reference,
        EntryKind.SUBSCRIPTION_REFILL,
    )
