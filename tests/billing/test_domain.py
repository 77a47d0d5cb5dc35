import math
from datetime import UTC, datetime, timedelta

import pytest

from magicpixels.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import EntryKind, Hold, HoldState, Movement

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def held(amount: int = 10, state: HoldState = HoldState.HELD) -> Hold:
    return Hold("job_1", "acct_1", amount, 0, state, True, NOW, NOW + timedelta(days=7))


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


def test_the_plans() -> None:
    plans = [
        (p.id, p.credits_per_period, p.period_days, p.price_cents, p.currency) for p in domain.PLANS
    ]

    assert plans == [
        ("free", 0, 30, 0, "USD"),
        ("starter", 500, 30, 900, "USD"),
        ("pro", 2500, 30, 3900, "USD"),
    ]
    assert domain.plan_of("pro").name == "Pro"


def test_an_unknown_plan_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.plan_of("platinum")

    assert (caught.value.reason, caught.value.param) == ("PLAN_UNKNOWN", "plan_id")


def test_a_new_hold_holds_its_amount_until_it_times_out() -> None:
    hold = domain.new_hold("acct_1", "job_1", 22, True, NOW, timedelta(hours=1))

    assert (hold.state, hold.amount, hold.captured_amount) == (HoldState.HELD, 22, 0)
    assert (hold.created_at, hold.expires_at, hold.resolved_at) == (
        NOW,
        NOW + timedelta(hours=1),
        None,
    )


def test_a_reference_belongs_to_the_account_that_reserved_it() -> None:
    assert domain.owned(held(), "acct_1") == held()
    with pytest.raises(AlreadyExists) as caught:
        domain.owned(held(), "acct_2")

    assert caught.value.reason == "HOLD_REFERENCE_CONFLICT"


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
    assert movement.reference == "job_1"


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


def test_a_grant_adds_available_credits() -> None:
    assert domain.grant_movement("acct_1", 5, "welcome", "promo") == Movement(
        "acct_1", EntryKind.GRANT, 5, 0, "promo", "welcome"
    )


@pytest.mark.parametrize("amount", [0, -5])
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


def test_a_subscription_period_refills_the_plans_credits_once() -> None:
    plan = domain.plan_of("starter")
    period = domain.next_period("acct_1", plan, NOW)
    refill = domain.refill_movement(period, plan)

    assert period.current_period_end == NOW + timedelta(days=30)
    assert (refill.kind, refill.available, refill.reserved) == (
        EntryKind.SUBSCRIPTION_REFILL,
        500,
        0,
    )
    assert refill.reference == f"starter:{NOW.isoformat()}"
    assert domain.is_current(period, plan, NOW + timedelta(days=29))
    assert not domain.is_current(period, plan, NOW + timedelta(days=30))
    assert not domain.is_current(period, domain.plan_of("pro"), NOW)
