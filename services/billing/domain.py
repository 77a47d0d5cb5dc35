"""The rules of credits: the price table, holds, plans and subscriptions, and what each moves.

Every change of an account's credits is a `Movement`: a signed change of its available and of
its reserved credits, written as one ledger entry whose `amount` is the change of available.
So an account's available credits always equal the sum of its entries' amounts:

| operation | available | reserved |
|---|---|---|
| grant, subscription refill, adjustment | + amount (an adjustment may be negative) | 0 |
| hold (Reserve) | - cost | + cost |
| capture of `captured` credits | + (cost - captured), what is given back | - cost |
| release, expiry | + cost | - cost |
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from magicpixels.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from magicpixels.core.ids import new_id

MAX_ID_LENGTH = 64
MAX_REFERENCE_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 500


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
    ADJUSTMENT = "adjustment"


class SubscriptionStatus(StrEnum):
    PENDING = "pending"  # waiting for its payment; no credits yet
    ACTIVE = "active"
    CANCELED = "canceled"  # ended


@dataclass(frozen=True)
class Price:
    """`credits` per started block of `unit_block` units."""

    mode: str
    credits: int
    unit: PriceUnit
    unit_block: int
    description: str
    # Other names of the mode that the API accepts.
    aliases: tuple[str, ...] = ()

    def cost(self, duration_seconds: float) -> int:
        if self.unit is PriceUnit.JOB:
            return self.credits
        return self.credits * math.ceil(duration_seconds / self.unit_block)


PRICES: tuple[Price, ...] = (
    Price("text_to_image", 1, PriceUnit.JOB, 1, "1 credit per image"),
    Price("image_to_image", 1, PriceUnit.JOB, 1, "1 credit per image"),
    Price(
        "text_to_audio",
        1,
        PriceUnit.SECOND,
        10,
        "1 credit per started 10 seconds of audio",
        aliases=("audio",),
    ),
    Price("image_to_video", 22, PriceUnit.SECOND, 1, "22 credits per started second of video"),
)
_PRICES_BY_MODE = {price.mode: price for price in PRICES}
_PRICES_BY_ALIAS = {alias: price for price in PRICES for alias in price.aliases}


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    credits_per_period: int
    period_days: int
    price_cents: int
    currency: str


class PlanCatalog:
    """The plans on offer, from configuration, in the order configured."""

    def __init__(self, plans: Iterable[Plan]) -> None:
        self._by_id = {plan.id: plan for plan in plans}

    def __iter__(self) -> Iterator[Plan]:
        return iter(self._by_id.values())

    def find(self, plan_id: str) -> Plan | None:
        return self._by_id.get(plan_id)

    def get(self, plan_id: str) -> Plan:
        plan = self._by_id.get(plan_id)
        if plan is None:
            known = ", ".join(self._by_id)
            raise InvalidArgument(
                "PLAN_UNKNOWN", f"unknown plan {plan_id!r}; known: {known}", param="plan_id"
            )
        return plan


@dataclass(frozen=True)
class Balance:
    account_id: str
    available: int
    reserved: int


@dataclass(frozen=True)
class Hold:
    reference: str
    account_id: str
    mode: str
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
    """An account's subscription; its period is the paid one running, or the last one."""

    id: str
    account_id: str
    plan_id: str
    status: SubscriptionStatus
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    created_at: datetime
    canceled_at: datetime | None = None
    ended_at: datetime | None = None


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
    price = _PRICES_BY_MODE.get(mode) or _PRICES_BY_ALIAS.get(mode)
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


# The most credits one grant or adjustment moves: far above any real one, and far enough below
# the balance columns' 64-bit limit that no run of them reaches it (it was an internal error).
MAX_MOVEMENT = 10**12


def positive_amount(amount: int) -> int:
    if not 0 < amount <= MAX_MOVEMENT:
        message = f"amount must be a number of credits between 1 and {MAX_MOVEMENT}"
        raise InvalidArgument("PARAMETER_INVALID", message, param="amount")
    return amount


def new_hold(
    account_id: str,
    reference: str,
    mode: str,
    duration_seconds: float,
    *,
    livemode: bool,
    now: datetime,
    timeout: timedelta,
) -> Hold:
    """A hold of what the usage costs, until it times out."""
    amount = cost(mode, duration_seconds, livemode=livemode)
    return Hold(
        reference,
        account_id,
        price_of(mode).mode,
        amount,
        0,
        HoldState.HELD,
        livemode,
        now,
        now + timeout,
    )


def replayed(earlier: Hold, draft: Hold) -> Hold:
    """The hold a repeated Reserve answers: the earlier one, if the request is the same.

    A reference is one job's: a request for another account, mode or price cannot reuse it.
    """
    if earlier.account_id != draft.account_id:
        message = f"the reference {earlier.reference} holds credits of another account"
        raise AlreadyExists("HOLD_REFERENCE_CONFLICT", message)
    asked = (draft.mode, draft.amount, draft.livemode)
    if (earlier.mode, earlier.amount, earlier.livemode) != asked:
        message = (
            f"the reference {earlier.reference} already holds {earlier.amount} credits for "
            f"{earlier.mode}; this request asks {draft.amount} for {draft.mode}"
        )
        raise AlreadyExists("HOLD_REFERENCE_CONFLICT", message)
    return earlier


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
    description = f"{hold.amount} credits held for {hold.reference} ({hold.mode})"
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


def insufficient_credits(cost: int, available: int, subject: str = "job") -> FailedPrecondition:
    message = f"this {subject} needs {cost} credits, {available} available"
    return FailedPrecondition("INSUFFICIENT_CREDITS", message)


def adjustment_movement(
    account_id: str, amount: int, description: str, reference: str | None
) -> Movement:
    """An operator's correction, up or down; it cannot take available credits below zero."""
    if not 0 < abs(amount) <= MAX_MOVEMENT:
        message = f"amount must not be zero, nor beyond {MAX_MOVEMENT} credits either way"
        raise InvalidArgument("PARAMETER_INVALID", message, param="amount")
    return Movement(
        account_id, EntryKind.ADJUSTMENT, amount, 0, reference, required_description(description)
    )


def required_description(description: str) -> str:
    return required(description.strip(), "description", MAX_DESCRIPTION_LENGTH)


def is_subscribed(current: Subscription, plan: Plan) -> bool:
    """Subscribing again to the plan running, or awaiting its payment, starts nothing new."""
    return current.plan_id == plan.id and current.status is not SubscriptionStatus.CANCELED


def resumed(current: Subscription) -> Subscription:
    """Subscribing again to a plan canceled at period end keeps it running."""
    return replace(current, cancel_at_period_end=False, canceled_at=None)


def needs_payment(plan: Plan) -> bool:
    return plan.price_cents > 0


def requested(
    current: Subscription | None, account_id: str, plan: Plan, now: datetime
) -> Subscription:
    """A subscription to `plan` awaiting its payment: the account's changed, or a new one after
    none or an ended one. A running period stays as it is until the payment starts a new one."""
    if current is None or current.status is SubscriptionStatus.CANCELED:
        return Subscription(
            new_id("sub"), account_id, plan.id, SubscriptionStatus.PENDING, None, None, False, now
        )
    return replace(
        current,
        plan_id=plan.id,
        status=SubscriptionStatus.PENDING,
        cancel_at_period_end=False,
        canceled_at=None,
    )


def started(subscription: Subscription, plan: Plan, start: datetime) -> Subscription:
    """The subscription, paid, with a period of its plan starting at `start`."""
    return replace(
        subscription,
        status=SubscriptionStatus.ACTIVE,
        current_period_start=start,
        current_period_end=start + timedelta(days=plan.period_days),
    )


def approvable(current: Subscription | None) -> Subscription:
    """The subscription whose payment an approval confirms; approving an active one again is
    answered as it is."""
    found = existing(current)
    if found.status is SubscriptionStatus.CANCELED:
        raise FailedPrecondition(
            "SUBSCRIPTION_NOT_PENDING", f"the subscription {found.id} has ended"
        )
    return found


def canceled(current: Subscription, now: datetime) -> Subscription:
    """Cancels at the end of the paid period; a pending subscription has none and ends now.
    Canceling again changes nothing."""
    if current.status is SubscriptionStatus.PENDING:
        return replace(current, status=SubscriptionStatus.CANCELED, canceled_at=now, ended_at=now)
    if current.status is SubscriptionStatus.CANCELED or current.cancel_at_period_end:
        return current
    return replace(current, cancel_at_period_end=True, canceled_at=now)


def existing(current: Subscription | None) -> Subscription:
    if current is None:
        raise NotFound("SUBSCRIPTION_NOT_FOUND", "the account has no subscription")
    return current


def ended(subscription: Subscription) -> Subscription:
    """A due subscription that was canceled, or whose plan is no longer offered, ends with its
    period."""
    return replace(
        subscription, status=SubscriptionStatus.CANCELED, ended_at=subscription.current_period_end
    )


def renewed(subscription: Subscription, plan: Plan, now: datetime) -> Subscription:
    """The period after a due one: the one that contains `now`. Periods that passed while no
    sweeper ran are not refilled after the fact."""
    assert subscription.current_period_end is not None
    length = timedelta(days=plan.period_days)
    skipped = (now - subscription.current_period_end) // length
    return started(subscription, plan, subscription.current_period_end + skipped * length)


def unpaid(subscription: Subscription) -> Subscription:
    """A due subscription whose renewal the provider has not confirmed: it waits, without a
    refill, for ApproveSubscription."""
    return replace(subscription, status=SubscriptionStatus.PENDING)


def starts_period(before: Subscription | None, after: Subscription) -> bool:
    """Whether a change of the subscription starts a paid period, which is refilled."""
    return after.status is SubscriptionStatus.ACTIVE and (
        before is None or before.current_period_start != after.current_period_start
    )


def refill_movement(subscription: Subscription, plan: Plan) -> Movement | None:
    """The period's credits (none on a plan without), referenced by the subscription and the
    period's start: the ledger takes one entry per reference, so a period is refilled once
    whoever refills it."""
    assert subscription.current_period_start is not None
    if not plan.credits_per_period:
        return None
    reference = f"{subscription.id}:{subscription.current_period_start.isoformat()}"
    description = f"{plan.name} plan: {plan.credits_per_period} credits for the period"
    return grant_movement(
        subscription.account_id,
        plan.credits_per_period,
        description,
        reference,
        EntryKind.SUBSCRIPTION_REFILL,
    )
