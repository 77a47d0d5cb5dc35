import asyncio
import contextlib
from collections import Counter
from datetime import timedelta
from typing import Any

import grpc
import pytest

from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.errors import remote_error
from magicpixels.core.settings import BillingSettings
from magicpixels.core.timestamps import utcnow
from magicpixels.services.billing import domain, server, store
from magicpixels.services.billing.domain import HoldState
from magicpixels.services.billing.store import BillingStore
from tests.billing.conftest import ACCOUNT, Books, balance, entries, refused

HELD = billing_pb2.HOLD_STATE_HELD
CAPTURED = billing_pb2.HOLD_STATE_CAPTURED
RELEASED = billing_pb2.HOLD_STATE_RELEASED


async def grant(billing: Any, amount: int, account_id: str = ACCOUNT, reference: str = "") -> Any:
    request = billing_pb2.GrantRequest(
        account_id=account_id, amount=amount, description="welcome", reference=reference
    )
    return await billing.Grant(request)


async def reserve(
    billing: Any,
    reference: str,
    mode: str = "text_to_image",
    duration: float = 0,
    *,
    account_id: str = ACCOUNT,
    livemode: bool = True,
) -> Any:
    usage = billing_pb2.Usage(mode=mode, duration_seconds=duration)
    request = billing_pb2.ReserveRequest(
        account_id=account_id, reference=reference, usage=usage, livemode=livemode
    )
    return await billing.Reserve(request)


async def capture(billing: Any, reference: str, amount: int | None = None) -> Any:
    return await billing.Capture(billing_pb2.CaptureRequest(reference=reference, amount=amount))


async def release(billing: Any, reference: str) -> Any:
    return await billing.Release(billing_pb2.ReleaseRequest(reference=reference))


async def quote(billing: Any, mode: str, duration: float = 0, livemode: bool = True) -> Any:
    usage = billing_pb2.Usage(mode=mode, duration_seconds=duration)
    return await billing.Quote(
        billing_pb2.QuoteRequest(account_id=ACCOUNT, usage=usage, livemode=livemode)
    )


async def test_an_unknown_account_has_no_credits(billing: Any) -> None:
    assert await balance(billing, "acct_new") == (0, 0)


async def test_a_grant_adds_available_credits_with_an_entry(billing: Any) -> None:
    entry = await grant(billing, 5)

    assert entry.id.startswith("ledg_")
    assert (entry.kind, entry.amount, entry.balance_after) == (
        billing_pb2.LEDGER_ENTRY_KIND_GRANT,
        5,
        5,
    )
    assert (entry.account_id, entry.description) == (ACCOUNT, "welcome")
    assert await balance(billing) == (5, 0)


async def test_a_grant_with_a_reference_is_made_once(billing: Any) -> None:
    first = await grant(billing, 5, reference="promo-1")
    again = await grant(billing, 7, reference="promo-1")
    other = await grant(billing, 5, account_id="acct_bob", reference="promo-1")

    assert again == first
    assert other.id != first.id
    assert await balance(billing) == (5, 0)


async def test_concurrent_grants_with_one_reference_are_made_once(billing: Any) -> None:
    made = await asyncio.gather(*(grant(billing, 5, reference="promo-1") for _ in range(10)))

    assert len({entry.id for entry in made}) == 1
    assert await balance(billing) == (5, 0)


@pytest.mark.parametrize("amount", [0, -3, 10**12 + 1])
async def test_a_grant_must_be_positive(billing: Any, amount: int) -> None:
    """And within one grant's limit: past it, balances would near their 64-bit columns' end,
    which PostgreSQL answered with an internal error."""
    error = await refused(grant(billing, amount))

    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAMETER_INVALID",
        {"param": "amount"},
    )


async def test_quote_prices_the_usage_against_the_available_credits(billing: Any) -> None:
    await grant(billing, 30)

    video = await quote(billing, "image_to_video", 1.5)
    audio = await quote(billing, "audio", 10.1)
    test_video = await quote(billing, "image_to_video", 30, livemode=False)

    assert (video.cost_credits, video.available_credits, video.sufficient) == (44, 30, False)
    assert (audio.cost_credits, audio.sufficient) == (2, True)
    assert (test_video.cost_credits, test_video.sufficient) == (0, True)
    assert await balance(billing) == (30, 0)


async def test_an_unknown_mode_is_refused(billing: Any) -> None:
    error = await refused(quote(billing, "text_to_smell"))

    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MODE_UNKNOWN",
        {"param": "mode"},
    )


async def test_reserve_moves_the_cost_from_available_to_reserved(
    billing: Any, billing_settings: BillingSettings
) -> None:
    await grant(billing, 50)

    hold = await reserve(billing, "job_1", "image_to_video", 1.5)

    assert (hold.reference, hold.account_id, hold.amount, hold.state) == (
        "job_1",
        ACCOUNT,
        44,
        HELD,
    )
    assert hold.livemode
    lifetime = hold.expire_time.ToDatetime() - hold.create_time.ToDatetime()
    assert lifetime.total_seconds() == billing_settings.hold_timeout_seconds
    assert await balance(billing) == (6, 44)
    assert (await entries(billing))[-1] == ("HOLD", -44, 6, "job_1")


async def test_reserve_is_idempotent_by_reference_even_once_credits_ran_out(billing: Any) -> None:
    await grant(billing, 1)

    first = await reserve(billing, "job_1")
    again = await reserve(billing, "job_1")

    assert again == first
    assert await balance(billing) == (0, 1)


async def test_concurrent_reserves_with_one_reference_take_the_credits_once(billing: Any) -> None:
    await grant(billing, 22)

    holds = await asyncio.gather(
        *(reserve(billing, "job_1", "image_to_video", 1) for _ in range(10))
    )

    assert all(hold == holds[0] for hold in holds)
    assert await balance(billing) == (0, 22)


async def test_another_account_cannot_reserve_under_a_taken_reference(billing: Any) -> None:
    await grant(billing, 1)
    await reserve(billing, "job_1")

    error = await refused(reserve(billing, "job_1", account_id="acct_bob"))

    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "HOLD_REFERENCE_CONFLICT")


@pytest.mark.parametrize(
    ("mode", "duration", "livemode"),
    [("image_to_video", 2, True), ("image_to_image", 0, True), ("image_to_video", 1, False)],
    ids=["another_amount", "another_mode", "test_mode"],
)
async def test_a_reference_replayed_with_another_request_is_refused_and_changes_nothing(
    billing: Any, mode: str, duration: float, livemode: bool
) -> None:
    await grant(billing, 50)
    first = await reserve(billing, "job_1", "image_to_video", 1)

    error = await refused(reserve(billing, "job_1", mode, duration, livemode=livemode))

    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "HOLD_REFERENCE_CONFLICT")
    assert await reserve(billing, "job_1", "image_to_video", 1) == first
    assert await balance(billing) == (28, 22)
    assert [kind for kind, *_ in await entries(billing)] == ["GRANT", "HOLD"]


async def test_insufficient_credits_leave_the_balance_untouched(billing: Any) -> None:
    await grant(billing, 5)

    error = await refused(reserve(billing, "job_1", "image_to_video", 1))

    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_CREDITS",
    )
    assert error.message == "this job needs 22 credits, 5 available"
    assert await balance(billing) == (5, 0)
    assert [kind for kind, *_ in await entries(billing)] == ["GRANT"]
    assert (await refused(release(billing, "job_1"))).reason == "HOLD_NOT_FOUND"


async def test_an_account_billing_never_saw_has_insufficient_credits(billing: Any) -> None:
    error = await refused(reserve(billing, "job_1", account_id="acct_new"))

    assert error.message == "this job needs 1 credits, 0 available"


async def test_test_mode_holds_are_free_and_touch_no_credits(billing: Any) -> None:
    hold = await reserve(billing, "job_1", "image_to_video", 30, livemode=False)
    captured = await capture(billing, "job_1")

    assert (hold.amount, hold.livemode, captured.state) == (0, False, CAPTURED)
    assert await balance(billing) == (0, 0)
    assert await entries(billing) == []


async def test_capture_spends_the_whole_hold_once(billing: Any) -> None:
    await grant(billing, 30)
    await reserve(billing, "job_1", "image_to_video", 1)

    captured = await capture(billing, "job_1")
    again = await capture(billing, "job_1")
    error = await refused(release(billing, "job_1"))

    assert (captured.state, captured.captured_amount) == (CAPTURED, 22)
    assert captured.HasField("resolve_time")
    assert again == captured
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_ALREADY_RESOLVED",
    )
    assert await balance(billing) == (8, 0)
    assert (await entries(billing))[-1] == ("CAPTURE", 0, 8, "job_1")


async def test_a_partial_capture_returns_the_rest(billing: Any) -> None:
    await grant(billing, 50)
    await reserve(billing, "job_1", "image_to_video", 1.5)

    captured = await capture(billing, "job_1", 30)

    assert (captured.amount, captured.captured_amount) == (44, 30)
    assert await balance(billing) == (20, 0)
    assert (await entries(billing))[-1] == ("CAPTURE", 14, 20, "job_1")


async def test_capturing_more_than_the_hold_is_refused_and_keeps_it_held(billing: Any) -> None:
    await grant(billing, 5)
    await reserve(billing, "job_1")

    error = await refused(capture(billing, "job_1", 2))
    released = await release(billing, "job_1")

    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAMETER_INVALID",
        {"param": "amount"},
    )
    assert released.state == RELEASED


async def test_release_returns_the_hold_once(billing: Any) -> None:
    await grant(billing, 5)
    await reserve(billing, "job_1", "audio", 25)

    released = await release(billing, "job_1")
    again = await release(billing, "job_1")

    assert (released.state, released.captured_amount) == (RELEASED, 0)
    assert again == released
    assert await balance(billing) == (5, 0)
    assert await entries(billing) == [
        ("GRANT", 5, 5, ""),
        ("HOLD", -3, 2, "job_1"),
        ("RELEASE", 3, 5, "job_1"),
    ]


async def test_a_capture_after_a_release_is_refused_and_changes_nothing(billing: Any) -> None:
    await grant(billing, 5)
    await reserve(billing, "job_1", "audio", 25)
    released = await release(billing, "job_1")
    before = (await balance(billing), await entries(billing))

    whole = await refused(capture(billing, "job_1"))
    part = await refused(capture(billing, "job_1", 1))

    assert (whole.code, whole.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_ALREADY_RESOLVED",
    )
    assert whole.message == "the hold job_1 is already released"
    assert part.reason == "HOLD_ALREADY_RESOLVED"
    assert (await balance(billing), await entries(billing)) == before
    assert await release(billing, "job_1") == released


@pytest.mark.parametrize("resolve", [capture, release])
async def test_resolving_an_unknown_reference_is_not_found(billing: Any, resolve: Any) -> None:
    error = await refused(resolve(billing, "job_missing"))

    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND")


async def test_a_spend_race_of_200_reserves_against_50_credits_holds_exactly_50(
    billing: Any,
) -> None:
    """Every call is followed by the books' check, so available never went below zero."""
    await grant(billing, 50)

    outcomes = await asyncio.gather(
        *(reserve(billing, f"job_{n}") for n in range(200)), return_exceptions=True
    )

    holds = [outcome for outcome in outcomes if isinstance(outcome, billing_pb2.Hold)]
    refusals = Counter(
        remote_error(o).reason for o in outcomes if not isinstance(o, billing_pb2.Hold)
    )
    assert len(holds) == 50
    assert refusals == {"INSUFFICIENT_CREDITS": 150}
    assert await balance(billing) == (0, 50)
    ledger = await entries(billing)
    assert Counter(kind for kind, *_ in ledger) == {"GRANT": 1, "HOLD": 50}
    assert {reference for _, _, _, reference in ledger} - {""} == {h.reference for h in holds}
    assert min(balance_after for _, _, balance_after, _ in ledger) == 0


async def test_concurrent_captures_and_releases_of_one_hold_resolve_it_once(billing: Any) -> None:
    await grant(billing, 5)
    await reserve(billing, "job_1")

    outcomes = await asyncio.gather(
        *(resolve(billing, "job_1") for _ in range(5) for resolve in (capture, release)),
        return_exceptions=True,
    )

    answered = {o.state for o in outcomes if isinstance(o, billing_pb2.Hold)}
    refusals = {remote_error(o).reason for o in outcomes if not isinstance(o, billing_pb2.Hold)}
    assert len(answered) == 1
    assert refusals == {"HOLD_ALREADY_RESOLVED"}
    assert await balance(billing) == ((4, 0) if answered == {CAPTURED} else (5, 0))
    assert len(await entries(billing)) == 3


async def test_the_ledger_is_listed_newest_first_in_pages(billing: Any) -> None:
    made = [await grant(billing, amount) for amount in (1, 2, 3)]
    await grant(billing, 9, account_id="acct_bob")

    first = await billing.ListLedgerEntries(
        billing_pb2.ListLedgerEntriesRequest(account_id=ACCOUNT, page_size=2)
    )
    second = await billing.ListLedgerEntries(
        billing_pb2.ListLedgerEntriesRequest(
            account_id=ACCOUNT, page_size=2, page_token=first.next_page_token
        )
    )

    assert [entry.amount for entry in first.ledger_entries] == [3, 2]
    assert first.next_page_token == made[1].id
    assert list(second.ledger_entries) == [made[0]]
    assert second.next_page_token == ""


async def test_list_prices_publishes_the_price_table(billing: Any) -> None:
    prices = (await billing.ListPrices(billing_pb2.ListPricesRequest())).prices

    assert [(p.mode, p.credits, p.unit, p.unit_block, list(p.aliases)) for p in prices] == [
        ("text_to_image", 1, billing_pb2.PRICE_UNIT_JOB, 1, []),
        ("image_to_image", 1, billing_pb2.PRICE_UNIT_JOB, 1, []),
        ("text_to_audio", 1, billing_pb2.PRICE_UNIT_SECOND, 10, ["audio"]),
        ("image_to_video", 22, billing_pb2.PRICE_UNIT_SECOND, 1, []),
    ]
    assert all(price.description for price in prices)


async def test_list_plans(billing: Any) -> None:
    plans = (await billing.ListPlans(billing_pb2.ListPlansRequest())).plans

    assert [(p.id, p.credits_per_period, p.price_cents, p.currency) for p in plans] == [
        ("free", 0, 0, "USD"),
        ("starter", 500, 900, "USD"),
        ("pro", 2500, 3900, "USD"),
    ]


async def test_an_account_id_is_required(billing: Any) -> None:
    error = await refused(balance(billing, ""))

    assert (error.reason, error.metadata) == ("PARAMETER_MISSING", {"param": "account_id"})


async def test_the_books_check_detects_a_broken_invariant(billing: Any, books: Books) -> None:
    await grant(billing, 5)
    async with books.engine.begin() as connection:
        await connection.execute(store.balances.update().values(available=6))

    with pytest.raises(AssertionError):
        await books.check()


async def test_the_sweeper_expires_overdue_holds(billing: Any, ledger: BillingStore) -> None:
    await grant(billing, 1)
    overdue = domain.new_hold(
        ACCOUNT, "job_1", "text_to_image", 0, livemode=True, now=utcnow(), timeout=timedelta(0)
    )
    await ledger.reserve(overdue)

    sweeper = asyncio.create_task(server.sweep([ledger.expire_holds], interval=0.01))
    try:
        while (await ledger.get_hold("job_1")).state is HoldState.HELD:
            await asyncio.sleep(0.01)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    assert (await ledger.get_hold("job_1")).state is HoldState.EXPIRED
    assert await balance(billing) == (1, 0)
    assert (await entries(billing))[-1] == ("EXPIRY", 1, 1, "job_1")


async def test_a_failing_sweep_task_is_logged_and_the_others_still_run(
    ledger: BillingStore,
) -> None:
    ran: list[str] = []

    async def broken(_now: object) -> None:
        ran.append("broken")
        raise RuntimeError("the database went away")

    async def working(_now: object) -> None:
        ran.append("working")

    sweeper = asyncio.create_task(server.sweep([broken, working], interval=0.01))
    try:
        while ran.count("working") < 2:
            await asyncio.sleep(0.01)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    assert ran[:4] == ["broken", "working", "broken", "working"]


async def test_an_adjustment_corrects_the_balance_either_way_once(billing: Any) -> None:
    await grant(billing, 10)

    taken = await billing.AdjustCredits(
        billing_pb2.AdjustCreditsRequest(
            account_id=ACCOUNT, amount=-4, description="duplicate grant", reference="fix-1"
        )
    )
    again = await billing.AdjustCredits(
        billing_pb2.AdjustCreditsRequest(
            account_id=ACCOUNT, amount=-4, description="duplicate grant", reference="fix-1"
        )
    )
    given = await billing.AdjustCredits(
        billing_pb2.AdjustCreditsRequest(account_id=ACCOUNT, amount=2, description="goodwill")
    )

    assert again == taken
    assert (taken.kind, taken.amount, taken.balance_after, taken.description) == (
        billing_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT,
        -4,
        6,
        "duplicate grant",
    )
    assert given.balance_after == 8
    assert await balance(billing) == (8, 0)


async def test_an_adjustment_cannot_take_credits_below_zero(billing: Any) -> None:
    await grant(billing, 3)

    error = await refused(
        billing.AdjustCredits(
            billing_pb2.AdjustCreditsRequest(account_id=ACCOUNT, amount=-4, description="x")
        )
    )
    missing = await refused(
        billing.AdjustCredits(billing_pb2.AdjustCreditsRequest(account_id=ACCOUNT, amount=1))
    )

    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_CREDITS",
    )
    assert error.message == "this adjustment needs 4 credits, 3 available"  # no job involved
    assert (missing.reason, missing.metadata) == ("PARAMETER_MISSING", {"param": "description"})
    assert await balance(billing) == (3, 0)
