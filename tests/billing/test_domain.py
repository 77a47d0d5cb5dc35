import math
from datetime import UTC, datetime, timedelta

import pytest

from magicpixels.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from magicpixels.core.settings import DEFAULT_PLANS
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import (
    EntryKind,
    Hold,
    HoldState,
    Movement,
    Plan,
    PlanCatalog,
    Subscription,
    SubscriptionStatus,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
PLANS = PlanCatalog(Plan(**plan.model_dump()) for plan in DEFAULT_PLANS)
STARTER = PLANS.get("starter")


def held(amount: int = 10, state: HoldState = HoldState.HELD) -> Hold:
    return Hold(
        "job_1", "acct_1", "text_to_image", amount, 0, state, True, NOW, NOW + timedelta(days=7)
    )


def drafted(
    mode: str = "image_to_video",
    duration: float = 1,
    livemode: bool = True,
    account: str = "acct_1",
) -> Hold:
    return domain.new_hold(
        account, "job_1", mode, duration, livemode=livemode, now=NOW, timeout=timedelta(hours=1)
    )


def active(plan: Plan = STARTER, start: datetime = NOW) -> Subscription:
    pending = domain.requested(None, "acct_1", plan, start)
    return domain.started(pending, plan, start)


@pytest.mark.parametrize(
    ("mode", "duration", "credits"),
    [
        ("text_to_image", 0, 1),
        ("text_to_image", 99, 1),
        ("image_to_image", 0, 1),
        ("text_to_audio", 0.5, 1),
        ("text_to_audio", 10, 1),
        ("text_to_audio", 10.1, 2),
        ("text_to_audio", 20, 2),
        ("text_to_audio", 300, 30),
        ("audio", 10, 1),
        ("audio", 25, 3),
        ("image_to_video", 0.2, 22),
        ("image_to_video", 1, 22),
        ("image_to_video", 1.5, 44),
        ("image_to_video", 4, 88),
        ("image_to_video", 30, 660),
    ],
)
def test_live_jobs_cost_what_the_price_table_says(mode: str, duration: float, credits: int) -> None:
    assert domain.cost(mode, duration, livemode=True) == credits


def test_test_mode_jobs_cost_nothing() -> None:
    assert domain.cost("image_to_video", 30, livemode=False) == 0


def test_the_price_table_prices_every_mode_once() -> None:
    table = [(p.mode, p.credits, p.unit, p.unit_block) for p in domain.PRICES]

    assert table == [
        ("text_to_image", 1, domain.PriceUnit.JOB, 1),
        ("image_to_image", 1, domain.PriceUnit.JOB, 1),
        ("text_to_audio", 1, domain.PriceUnit.SECOND, 10),
        ("image_to_video", 22, domain.PriceUnit.SECOND, 1),
    ]


@pytest.mark.parametrize("livemode", [True, False])
def test_an_unknown_mode_is_refused_in_either_mode(livemode: bool) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.cost("text_to_smell", 0, livemode=livemode)

    assert (caught.value.reason, caught.value.param) == ("MODE_UNKNOWN", "mode")


@pytest.mark.parametrize("mode", ["text_to_audio", "audio", "image_to_video"])
@pytest.mark.parametrize("duration", [0, -1, math.nan, math.inf])
def test_timed_modes_need_a_positive_finite_duration(mode: str, duration: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.cost(mode, duration, livemode=False)

    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "duration_seconds")


def test_the_default_plans_in_their_order() -> None:
    plans = [(p.id, p.credits_per_period, p.period_days, p.price_cents, p.currency) for p in PLANS]

    assert plans == [
        ("free", 0, 30, 0, "USD"),
        ("starter", 500, 30, 900, "USD"),
        ("pro", 2500, 30, 3900, "USD"),
    ]
    assert PLANS.get("pro").name == "Pro"
    assert PLANS.find("gold") is None


def test_an_unknown_plan_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as caught:
        PLANS.get("platinum")

    assert (caught.value.reason, caught.value.param) == ("PLAN_UNKNOWN", "plan_id")
    assert caught.value.message == "unknown plan 'platinum'; known: free, starter, pro"


def test_a_new_hold_holds_what_the_usage_costs_until_it_times_out() -> None:
    hold = drafted("image_to_video", 1.5)

    assert (hold.mode, hold.state, hold.amount, hold.captured_amount) == (
        "image_to_video",
        HoldState.HELD,
        44,
        0,
    )
    assert (hold.created_at, hold.expires_at, hold.resolved_at) == (
        NOW,
        NOW + timedelta(hours=1),
        None,
    )


def test_a_hold_records_the_mode_an_alias_names() -> None:
    assert (drafted("audio", 25).mode, drafted("audio", 25).amount) == ("text_to_audio", 3)


def test_a_test_mode_hold_holds_nothing() -> None:
    assert drafted("image_to_video", 30, livemode=False).amount == 0


def test_a_repeated_reserve_answers_the_earlier_hold() -> None:
    earlier = drafted()

    assert domain.replayed(earlier, drafted()) == earlier


@pytest.mark.parametrize(
    "other",
    [
        drafted(account="acct_2"),
        drafted(duration=2),
        drafted(livemode=False),
        drafted("text_to_image", 0),
    ],
    ids=["account", "amount", "test_mode", "mode"],
)
def test_a_reference_cannot_be_reused_for_another_request(other: Hold) -> None:
    with pytest.raises(AlreadyExists) as caught:
        domain.replayed(drafted(), other)

    assert caught.value.reason == "HOLD_REFERENCE_CONFLICT"


def test_another_mode_at_the_same_price_is_another_request() -> None:
    image = domain.new_hold(
        "acct_1", "job_1", "text_to_image", 0, livemode=True, now=NOW, timeout=DAY
    )
    edit = domain.new_hold(
        "acct_1", "job_1", "image_to_image", 0, livemode=True, now=NOW, timeout=DAY
    )

    with pytest.raises(AlreadyExists) as caught:
        domain.replayed(image, edit)

    assert caught.value.message == (
        "the reference job_1 already holds 1 credits for text_to_image; "
        "this request asks 1 for image_to_image"
    )


@pytest.mark.parametrize(("requested", "captured"), [(None, 10), (10, 10), (3, 3), (0, 0)])
def test_a_capture_takes_the_whole_hold_or_less(requested: int | None, captured: int) -> None:
    assert domain.capture(held(10), requested) == domain.Resolution(
        HoldState.CAPTURED, EntryKind.CAPTURE, captured
    )


@pytest.mark.parametrize("requested", [11, -1])
def test_a_capture_outside_the_hold_is_refused(requested: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.capture(held(10), requested)

    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "amount")


@pytest.mark.parametrize(
    ("state", "wanted"),
    [
        (HoldState.CAPTURED, HoldState.CAPTURED),
        (HoldState.RELEASED, HoldState.RELEASED),
        (HoldState.EXPIRED, HoldState.RELEASED),
    ],
)
def test_repeating_a_resolution_answers_the_hold(state: HoldState, wanted: HoldState) -> None:
    hold = held(state=state)

    assert domain.resolved_as(hold, wanted) == hold


@pytest.mark.parametrize(
    ("state", "wanted"),
    [
        (HoldState.RELEASED, HoldState.CAPTURED),
        (HoldState.EXPIRED, HoldState.CAPTURED),
        (HoldState.CAPTURED, HoldState.RELEASED),
    ],
)
def test_another_resolution_of_a_resolved_hold_is_refused(
    state: HoldState, wanted: HoldState
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        domain.resolved_as(held(state=state), wanted)

    assert caught.value.reason == "HOLD_ALREADY_RESOLVED"
    assert str(state) in caught.value.message


def test_a_hold_moves_its_cost_from_available_to_reserved() -> None:
    movement = domain.hold_movement(held(22))

    assert (movement.kind, movement.available, movement.reserved) == (EntryKind.HOLD, -22, 22)
    assert (movement.reference, movement.description) == (
        "job_1",
        "22 credits held for job_1 (text_to_image)",
    )


@pytest.mark.parametrize(
    ("resolution", "kind", "returned"),
    [
        (domain.Resolution(HoldState.CAPTURED, EntryKind.CAPTURE, 22), EntryKind.CAPTURE, 0),
        (domain.Resolution(HoldState.CAPTURED, EntryKind.CAPTURE, 15), EntryKind.CAPTURE, 7),
        (domain.RELEASE, EntryKind.RELEASE, 22),
        (domain.EXPIRY, EntryKind.EXPIRY, 22),
    ],
)
def test_a_resolution_empties_the_reservation_and_returns_what_was_not_captured(
    resolution: domain.Resolution, kind: EntryKind, returned: int
) -> None:
    movement = domain.resolution_movement(held(22), resolution)

    assert (movement.kind, movement.available, movement.reserved) == (kind, returned, -22)


@pytest.mark.parametrize("amount", [0, domain.MAX_MOVEMENT + 1, -domain.MAX_MOVEMENT - 1])
def test_an_adjustment_moves_some_credits_and_not_beyond_the_limit(amount: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.adjustment_movement("acct_1", amount, "fix", None)

    assert caught.value.param == "amount"
    assert domain.adjustment_movement("acct_1", -domain.MAX_MOVEMENT, "fix", None).available < 0


def test_a_grant_adds_available_credits() -> None:
    assert domain.grant_movement("acct_1", 5, "welcome", "promo") == Movement(
        "acct_1", EntryKind.GRANT, 5, 0, "promo", "welcome"
    )


@pytest.mark.parametrize("amount", [0, -5, domain.MAX_MOVEMENT + 1])
def test_a_grant_must_be_positive(amount: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.positive_amount(amount)

    assert caught.value.param == "amount"


def test_insufficient_credits_says_what_is_needed_and_available() -> None:
    error = domain.insufficient_credits(22, 5)

    assert (error.reason, error.message) == (
        "INSUFFICIENT_CREDITS",
        "this job needs 22 credits, 5 available",
    )


def test_required_values() -> None:
    assert domain.required("acct_1", "account_id") == "acct_1"
    assert domain.optional_reference("") is None
    for call, reason in [
        (lambda: domain.required("", "account_id"), "PARAMETER_MISSING"),
        (lambda: domain.required("a" * 65, "account_id"), "PARAMETER_INVALID"),
        (lambda: domain.checked_reference("r" * 256), "PARAMETER_INVALID"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            call()
        assert caught.value.reason == reason


def test_an_adjustment_moves_credits_either_way_with_a_reason() -> None:
    assert domain.adjustment_movement("acct_1", -3, " refund of a bad result ", "fix-1") == (
        Movement("acct_1", EntryKind.ADJUSTMENT, -3, 0, "fix-1", "refund of a bad result")
    )


@pytest.mark.parametrize(
    ("amount", "description", "param"),
    [(0, "why", "amount"), (5, "  ", "description"), (5, "x" * 501, "description")],
)
def test_an_adjustment_needs_an_amount_and_a_reason(
    amount: int, description: str, param: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.adjustment_movement("acct_1", amount, description, None)

    assert caught.value.param == param


def test_a_first_subscription_is_new_and_pending_without_a_period() -> None:
    pending = domain.requested(None, "acct_1", STARTER, NOW)

    assert pending.id.startswith("sub_")
    assert (pending.plan_id, pending.status, pending.current_period_start) == (
        "starter",
        SubscriptionStatus.PENDING,
        None,
    )
    assert (pending.created_at, pending.cancel_at_period_end) == (NOW, False)


def test_a_paid_subscription_runs_a_period_of_its_plan() -> None:
    running = active()

    assert running.status is SubscriptionStatus.ACTIVE
    assert (running.current_period_start, running.current_period_end) == (NOW, NOW + 30 * DAY)


def test_a_change_of_plan_keeps_the_subscription_and_its_period_until_paid() -> None:
    running = domain.canceled(active(), NOW)

    changed = domain.requested(running, "acct_1", PLANS.get("pro"), NOW + DAY)

    assert (changed.id, changed.plan_id, changed.status) == (
        running.id,
        "pro",
        SubscriptionStatus.PENDING,
    )
    assert changed.current_period_end == running.current_period_end
    assert (changed.cancel_at_period_end, changed.canceled_at) == (False, None)


def test_after_an_ended_subscription_a_new_one_starts() -> None:
    ended = domain.ended(active())

    assert domain.requested(ended, "acct_1", STARTER, NOW).id != ended.id
    assert not domain.is_subscribed(ended, STARTER)


def test_subscribing_again_to_the_running_or_awaited_plan_starts_nothing() -> None:
    pending = domain.requested(None, "acct_1", STARTER, NOW)

    assert domain.is_subscribed(active(), STARTER)
    assert domain.is_subscribed(pending, STARTER)
    assert not domain.is_subscribed(active(), PLANS.get("pro"))


def test_subscribing_again_undoes_a_cancellation() -> None:
    running = active()

    assert domain.resumed(domain.canceled(running, NOW + DAY)) == running


def test_only_plans_with_a_price_need_a_payment() -> None:
    assert [plan.id for plan in PLANS if domain.needs_payment(plan)] == ["starter", "pro"]


def test_canceling_an_active_subscription_ends_it_with_its_period() -> None:
    canceled = domain.canceled(active(), NOW + DAY)

    assert (canceled.status, canceled.cancel_at_period_end, canceled.canceled_at) == (
        SubscriptionStatus.ACTIVE,
        True,
        NOW + DAY,
    )
    assert domain.canceled(canceled, NOW + 2 * DAY) == canceled


def test_canceling_a_pending_subscription_ends_it_now() -> None:
    pending = domain.requested(None, "acct_1", STARTER, NOW)

    ended = domain.canceled(pending, NOW + DAY)

    assert (ended.status, ended.canceled_at, ended.ended_at) == (
        SubscriptionStatus.CANCELED,
        NOW + DAY,
        NOW + DAY,
    )
    assert domain.canceled(ended, NOW + 2 * DAY) == ended


def test_approval_needs_a_subscription_that_has_not_ended() -> None:
    pending = domain.requested(None, "acct_1", STARTER, NOW)
    assert domain.approvable(pending) == pending
    with pytest.raises(NotFound) as missing:
        domain.approvable(None)
    with pytest.raises(FailedPrecondition) as ended:
        domain.approvable(domain.ended(active()))

    assert missing.value.reason == "SUBSCRIPTION_NOT_FOUND"
    assert ended.value.reason == "SUBSCRIPTION_NOT_PENDING"


def test_a_due_subscription_that_was_canceled_ends_with_its_period() -> None:
    ended = domain.ended(domain.canceled(active(), NOW + DAY))

    assert (ended.status, ended.ended_at) == (SubscriptionStatus.CANCELED, NOW + 30 * DAY)


def test_a_renewal_starts_the_period_after_the_one_that_ended() -> None:
    renewed = domain.renewed(active(), STARTER, NOW + 30 * DAY + timedelta(minutes=1))

    assert (renewed.current_period_start, renewed.current_period_end) == (
        NOW + 30 * DAY,
        NOW + 60 * DAY,
    )


def test_a_late_renewal_starts_the_period_now_in_and_skips_those_missed() -> None:
    renewed = domain.renewed(active(), STARTER, NOW + 95 * DAY)

    assert renewed.current_period_start == NOW + 90 * DAY


def test_an_unpaid_renewal_waits_for_its_approval() -> None:
    assert domain.unpaid(active()).status is SubscriptionStatus.PENDING


def test_a_paid_period_is_refilled_once_by_its_reference() -> None:
    running = active()

    refill = domain.refill_movement(running, STARTER)

    assert refill == Movement(
        "acct_1",
        EntryKind.SUBSCRIPTION_REFILL,
        500,
        0,
        f"{running.id}:{NOW.isoformat()}",
        "Starter plan: 500 credits for the period",
    )
    assert domain.refill_movement(active(PLANS.get("free")), PLANS.get("free")) is None


def test_a_change_that_starts_a_paid_period_refills_it() -> None:
    pending = domain.requested(None, "acct_1", STARTER, NOW)
    running = active()

    assert domain.starts_period(None, running)
    assert domain.starts_period(pending, domain.started(pending, STARTER, NOW))
    assert domain.starts_period(running, domain.renewed(running, STARTER, NOW + 30 * DAY))
    assert not domain.starts_period(None, pending)
    assert not domain.starts_period(running, domain.canceled(running, NOW))
    assert not domain.starts_period(running, domain.ended(running))
