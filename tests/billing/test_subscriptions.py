import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.settings import BillingSettings, PlanSettings
from magicpixels.services.billing.domain import PlanCatalog, SubscriptionStatus
from magicpixels.services.billing.payments import (
    OperatorPayments,
    PaymentOutcome,
    PaymentRequest,
)
from magicpixels.services.billing.store import BillingStore
from magicpixels.services.billing.subscriptions import Subscriptions
from tests.billing.conftest import ACCOUNT, PLANS, Books, ServeBilling, balance, entries, refused

PENDING = billing_pb2.SUBSCRIPTION_STATUS_PENDING
ACTIVE = billing_pb2.SUBSCRIPTION_STATUS_ACTIVE
CANCELED = billing_pb2.SUBSCRIPTION_STATUS_CANCELED
DAY = timedelta(days=1)


async def subscribe(billing: Any, plan_id: str) -> Any:
    request = billing_pb2.SubscribeRequest(account_id=ACCOUNT, plan_id=plan_id)
    return await billing.Subscribe(request)


async def approve(billing: Any) -> Any:
    request = billing_pb2.ApproveSubscriptionRequest(account_id=ACCOUNT)
    return await billing.ApproveSubscription(request)


async def cancel(billing: Any) -> Any:
    return await billing.CancelSubscription(
        billing_pb2.CancelSubscriptionRequest(account_id=ACCOUNT)
    )


async def current(billing: Any) -> Any:
    return await billing.GetSubscription(billing_pb2.GetSubscriptionRequest(account_id=ACCOUNT))


def period_start(subscription: Any) -> datetime:
    start: datetime = subscription.current_period_start_time.ToDatetime(tzinfo=UTC)
    return start


def period_end(subscription: Any) -> datetime:
    end: datetime = subscription.current_period_end_time.ToDatetime(tzinfo=UTC)
    return end


def refills(ledger: list[tuple[str, int, int, str]]) -> list[int]:
    return [amount for kind, amount, *_ in ledger if kind == "SUBSCRIPTION_REFILL"]


@pytest.fixture
async def auto_billing(serve_billing: ServeBilling) -> Any:
    async with serve_billing(auto_approve_subscriptions=True) as served:
        yield served


def sweep(ledger: BillingStore, payments: Any = None, plans: PlanCatalog = PLANS) -> Subscriptions:
    """What the sweeper of a billing replica renews with."""
    return Subscriptions(ledger, plans, payments or OperatorPayments(auto_approve=False))


class RenewalsWaitForApproval:
    """A provider that confirms a renewal's payment later, as a card provider may."""

    async def request_payment(self, request: PaymentRequest) -> PaymentOutcome:
        return PaymentOutcome.PENDING if request.renewal else PaymentOutcome.PAID


async def test_a_paid_plan_waits_for_the_operator_before_its_credits(billing: Any) -> None:
    pending = await subscribe(billing, "starter")

    assert pending.id.startswith("sub_")
    assert (pending.plan_id, pending.status) == ("starter", PENDING)
    assert not pending.HasField("current_period_start_time")
    assert await current(billing) == pending
    assert await subscribe(billing, "starter") == pending
    assert await balance(billing) == (0, 0)

    approved = await approve(billing)
    again = await approve(billing)

    assert (approved.id, approved.status) == (pending.id, ACTIVE)
    start = period_start(approved)
    assert period_end(approved) - start == 30 * DAY
    assert again == approved
    assert refills(await entries(billing)) == [500]
    assert await balance(billing) == (500, 0)


async def test_the_dev_setting_approves_at_once_and_refills_once(auto_billing: Any) -> None:
    subscribed = await subscribe(auto_billing, "starter")
    again = await subscribe(auto_billing, "starter")

    assert subscribed.status == ACTIVE
    assert again == subscribed
    assert refills(await entries(auto_billing)) == [500]


async def test_concurrent_subscriptions_to_one_plan_refill_once(auto_billing: Any) -> None:
    answers = await asyncio.gather(*(subscribe(auto_billing, "pro") for _ in range(5)))

    assert all(answer == answers[0] for answer in answers)
    assert await balance(auto_billing) == (2500, 0)


async def test_the_free_plan_needs_no_approval_and_grants_nothing(billing: Any) -> None:
    subscribed = await subscribe(billing, "free")

    assert (subscribed.plan_id, subscribed.status) == ("free", ACTIVE)
    assert await entries(billing) == []


async def test_an_upgrade_starts_a_period_of_the_new_plan_with_its_credits(
    auto_billing: Any,
) -> None:
    starter = await subscribe(auto_billing, "starter")

    pro = await subscribe(auto_billing, "pro")

    assert (pro.id, pro.plan_id, pro.status) == (starter.id, "pro", ACTIVE)
    assert period_start(pro) >= period_start(starter)
    assert refills(await entries(auto_billing)) == [500, 2500]
    assert await balance(auto_billing) == (3000, 0)


async def test_a_change_of_plan_waits_for_approval_and_keeps_the_running_period(
    billing: Any,
) -> None:
    await subscribe(billing, "starter")
    starter = await approve(billing)

    changing = await subscribe(billing, "pro")

    assert (changing.plan_id, changing.status) == ("pro", PENDING)
    assert changing.current_period_end_time == starter.current_period_end_time
    assert await balance(billing) == (500, 0)
    pro = await approve(billing)
    assert (pro.plan_id, pro.status) == ("pro", ACTIVE)
    assert refills(await entries(billing)) == [500, 2500]


async def test_an_unknown_plan_is_refused(billing: Any) -> None:
    error = await refused(subscribe(billing, "gold"))

    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PLAN_UNKNOWN",
        {"param": "plan_id"},
    )


@pytest.mark.parametrize("call", [current, approve, cancel])
async def test_an_account_that_never_subscribed_has_no_subscription(
    billing: Any, call: Any
) -> None:
    error = await refused(call(billing))

    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "SUBSCRIPTION_NOT_FOUND")


async def test_a_pending_subscription_canceled_ends_at_once(billing: Any) -> None:
    pending = await subscribe(billing, "pro")

    ended = await cancel(billing)
    error = await refused(approve(billing))

    assert (ended.id, ended.status) == (pending.id, CANCELED)
    assert ended.end_time == ended.cancel_time
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SUBSCRIPTION_NOT_PENDING",
    )
    assert await cancel(billing) == ended
    assert await entries(billing) == []


async def test_a_canceled_subscription_runs_out_its_period_without_a_refill(
    auto_billing: Any, ledger: BillingStore
) -> None:
    subscribed = await subscribe(auto_billing, "starter")
    canceled = await cancel(auto_billing)
    end = period_end(subscribed)

    assert (canceled.status, canceled.cancel_at_period_end) == (ACTIVE, True)
    assert canceled.HasField("cancel_time")
    assert await sweep(ledger).renew_due(end - timedelta(seconds=1)) == []
    [ended] = await sweep(ledger).renew_due(end + timedelta(seconds=1))
    assert await sweep(ledger).renew_due(end + 90 * DAY) == []

    assert (ended.status, ended.ended_at) == (SubscriptionStatus.CANCELED, end)
    assert (await current(auto_billing)).status == CANCELED
    assert refills(await entries(auto_billing)) == [500]
    renewed = await subscribe(auto_billing, "starter")
    assert renewed.id != subscribed.id
    assert refills(await entries(auto_billing)) == [500, 500]


async def test_subscribing_again_before_the_period_ends_undoes_the_cancellation(
    auto_billing: Any, ledger: BillingStore
) -> None:
    subscribed = await subscribe(auto_billing, "starter")
    await cancel(auto_billing)

    resumed = await subscribe(auto_billing, "starter")
    [renewed] = await sweep(ledger).renew_due(period_end(subscribed))

    assert resumed == subscribed
    assert renewed.status is SubscriptionStatus.ACTIVE
    assert refills(await entries(auto_billing)) == [500, 500]


async def test_two_sweepers_renewing_at_once_refill_each_period_once(
    billing: Any, books: Books, ledger: BillingStore
) -> None:
    await subscribe(billing, "pro")
    first = await approve(billing)
    due = period_end(first) + timedelta(minutes=1)

    renewed = await asyncio.gather(*(sweep(ledger).renew_due(due) for _ in range(4)))
    again = await sweep(ledger).renew_due(due)

    await books.check()
    assert sorted(len(found) for found in renewed) == [0, 0, 0, 1]
    assert again == []
    second = await current(billing)
    assert (period_start(second), second.status) == (period_end(first), ACTIVE)
    assert period_end(second) == period_end(first) + 30 * DAY
    assert refills(await entries(billing)) == [2500, 2500]


async def test_a_sweep_after_missed_periods_refills_only_the_running_one(
    auto_billing: Any, ledger: BillingStore
) -> None:
    first = await subscribe(auto_billing, "starter")
    start = period_start(first)

    [renewed] = await sweep(ledger).renew_due(start + 95 * DAY)

    assert renewed.current_period_start == start + 90 * DAY
    assert refills(await entries(auto_billing)) == [500, 500]


async def test_a_renewal_the_provider_has_not_confirmed_waits_without_credits(
    auto_billing: Any, ledger: BillingStore
) -> None:
    first = await subscribe(auto_billing, "starter")

    [waiting] = await sweep(ledger, RenewalsWaitForApproval()).renew_due(period_end(first))
    approved = await approve(auto_billing)

    assert waiting.status is SubscriptionStatus.PENDING
    assert approved.status == ACTIVE
    assert period_start(approved) > period_start(first)
    assert refills(await entries(auto_billing)) == [500, 500]


async def test_a_plan_no_longer_offered_is_not_renewed(
    auto_billing: Any, ledger: BillingStore
) -> None:
    first = await subscribe(auto_billing, "starter")
    without_starter = PlanCatalog(plan for plan in PLANS if plan.id != "starter")

    [ended] = await sweep(ledger, plans=without_starter).renew_due(period_end(first))

    assert ended.status is SubscriptionStatus.CANCELED
    assert refills(await entries(auto_billing)) == [500]


async def test_plans_come_from_the_configuration(serve_billing: ServeBilling) -> None:
    team = PlanSettings(
        id="team", name="Team", credits_per_period=9000, period_days=7, price_cents=0
    )
    async with serve_billing(plans=(team,)) as billing:
        plans = (await billing.ListPlans(billing_pb2.ListPlansRequest())).plans
        subscribed = await subscribe(billing, "team")
        unknown = await refused(subscribe(billing, "starter"))

    assert [(p.id, p.name, p.credits_per_period, p.period_days) for p in plans] == [
        ("team", "Team", 9000, 7)
    ]
    start = period_start(subscribed)
    assert period_end(subscribed) - start == 7 * DAY
    assert unknown.message == "unknown plan 'starter'; known: team"


def test_the_plans_setting_is_json_with_distinct_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MP_BILLING_PLANS",
        '[{"id": "solo", "name": "Solo", "credits_per_period": 100, "period_days": 30,'
        ' "price_cents": 500, "currency": "EUR"}]',
    )

    [solo] = BillingSettings().plans

    assert (solo.id, solo.price_cents, solo.currency) == ("solo", 500, "EUR")
    twice = PlanSettings(id="a", name="A", credits_per_period=1, period_days=1, price_cents=0)
    with pytest.raises(ValidationError, match="names a plan id twice"):
        BillingSettings(plans=(twice, twice))
