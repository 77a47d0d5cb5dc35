import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest

from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.errors import FailedPrecondition, remote_error
from magicpixels.core.timestamps import utcnow
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import Balance, EntryKind, HoldState
from magicpixels.services.billing.store import BillingStore, Resolving
from tests.billing.conftest import Books, ServeBilling
from tests.support import eventually


def overdue_hold(reference: str, now: datetime) -> domain.Hold:
    return domain.new_hold(
        "acct_ada", reference, "text_to_image", 0, livemode=True, now=now, timeout=timedelta(0)
    )


async def reserve(billing: Any, reference: str) -> Any:
    usage = billing_pb2.Usage(mode="text_to_image")
    request = billing_pb2.ReserveRequest(
        account_id="acct_ada", reference=reference, usage=usage, livemode=True
    )
    return await billing.Reserve(request)


async def entry_kinds(ledger: BillingStore, reference: str) -> list[EntryKind]:
    """The kinds of the reference's entries, oldest first."""
    entries = await ledger.list_ledger_entries("acct_ada", 100, "")
    return [entry.kind for entry in reversed(entries) if entry.reference == reference]


async def test_expire_holds_returns_the_credits_of_overdue_holds(
    billing: Any, books: Books, ledger: BillingStore
) -> None:
    await billing.Grant(billing_pb2.GrantRequest(account_id="acct_ada", amount=5))
    for reference in ("job_old", "job_kept"):
        await reserve(billing, reference)
    await billing.Capture(billing_pb2.CaptureRequest(reference="job_kept"))
    overdue_at = utcnow() + timedelta(days=8)

    expired = await ledger.expire_holds(overdue_at)
    await books.check()

    assert [(hold.reference, hold.state, hold.resolved_at) for hold in expired] == [
        ("job_old", HoldState.EXPIRED, overdue_at)
    ]
    assert await ledger.expire_holds(overdue_at) == []
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 4, 0)


async def test_an_expired_hold_counts_as_released_but_cannot_be_captured(
    billing: Any, ledger: BillingStore
) -> None:
    now = utcnow()
    await ledger.grant(domain.grant_movement("acct_ada", 1, "welcome", None), now)
    await ledger.reserve(overdue_hold("job_1", now))
    await ledger.expire_holds(now)

    released = await billing.Release(billing_pb2.ReleaseRequest(reference="job_1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.Capture(billing_pb2.CaptureRequest(reference="job_1"))

    assert released.state == billing_pb2.HOLD_STATE_EXPIRED
    assert remote_error(caught.value).reason == "HOLD_ALREADY_RESOLVED"
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 1, 0)
    assert await entry_kinds(ledger, "job_1") == [EntryKind.HOLD, EntryKind.EXPIRY]


async def test_a_crash_between_reserve_and_capture_gives_the_credits_back_once(
    serve_billing: ServeBilling, books: Books, ledger: BillingStore
) -> None:
    async with serve_billing(hold_timeout_seconds=1) as before_the_crash:
        await before_the_crash.Grant(billing_pb2.GrantRequest(account_id="acct_ada", amount=3))
        await reserve(before_the_crash, "job_1")
    # The caller never captures. Billing restarts as two replicas, each sweeping.
    async with (
        serve_billing(sweep_interval_seconds=0.05) as replica,
        serve_billing(sweep_interval_seconds=0.05),
    ):

        async def expired() -> bool:
            return (await ledger.get_hold("job_1")).state is HoldState.EXPIRED

        await eventually(expired)
        late = utcnow() + timedelta(days=30)
        again = await asyncio.gather(*(ledger.expire_holds(late) for _ in range(3)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await replica.Capture(billing_pb2.CaptureRequest(reference="job_1"))

    await books.check()
    assert again == [[], [], []]
    assert remote_error(caught.value).reason == "HOLD_ALREADY_RESOLVED"
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 3, 0)
    assert await entry_kinds(ledger, "job_1") == [EntryKind.HOLD, EntryKind.EXPIRY]


async def test_an_expiry_racing_a_capture_and_a_release_resolves_the_hold_once(
    billing: Any, books: Books, ledger: BillingStore
) -> None:
    await billing.Grant(billing_pb2.GrantRequest(account_id="acct_ada", amount=2))
    await reserve(billing, "job_1")
    overdue_at = utcnow() + timedelta(days=8)

    outcomes = await asyncio.gather(
        ledger.expire_holds(overdue_at),
        billing.Capture(billing_pb2.CaptureRequest(reference="job_1")),
        billing.Release(billing_pb2.ReleaseRequest(reference="job_1")),
        return_exceptions=True,
    )

    await books.check()
    state = (await ledger.get_hold("job_1")).state
    kinds = await entry_kinds(ledger, "job_1")
    assert len(kinds) == 2
    assert kinds[0] == EntryKind.HOLD
    assert {HoldState.CAPTURED: EntryKind.CAPTURE, HoldState.RELEASED: EntryKind.RELEASE}.get(
        state, EntryKind.EXPIRY
    ) == kinds[1]
    refused = [remote_error(o).reason for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert set(refused) <= {"HOLD_ALREADY_RESOLVED"}
    spent = 1 if state is HoldState.CAPTURED else 0
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 2 - spent, 0)


async def test_a_test_mode_hold_is_recorded_once_and_resolved_without_credits(
    ledger: BillingStore, books: Books
) -> None:
    free = domain.new_hold(
        "acct_ada",
        "job_1",
        "image_to_video",
        30,
        livemode=False,
        now=utcnow(),
        timeout=timedelta(hours=1),
    )

    made = await asyncio.gather(*(ledger.reserve(free) for _ in range(5)))
    released = await ledger.resolve_hold(Resolving("job_1", lambda _: domain.RELEASE, utcnow()))

    await books.check()
    assert made == [free] * 5
    assert (released.state, released.amount) == (HoldState.RELEASED, 0)
    assert await ledger.list_ledger_entries("acct_ada", 100, "") == []
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 0, 0)


def audio_hold(reference: str, credits: int, *, account_id: str = "acct_ada") -> domain.Hold:
    """A live hold of `credits` credits (audio costs 1 per started 10 seconds)."""
    return domain.new_hold(
        account_id,
        reference,
        "text_to_audio",
        10 * credits,
        livemode=True,
        now=utcnow(),
        timeout=timedelta(hours=1),
    )


async def balance_after(ledger: BillingStore, account_id: str = "acct_ada") -> dict[str, int]:
    """The balance after each hold's HOLD entry, by reference."""
    entries = await ledger.list_ledger_entries(account_id, 100, "")
    return {e.reference or "": e.balance_after for e in entries if e.kind is EntryKind.HOLD}


async def test_concurrent_reserves_get_the_answers_of_reserves_made_one_at_a_time(
    ledger: BillingStore, books: Books
) -> None:
    """The three arrive together; the account cannot pay for all of them: the first is held,
    the second refused, and the third, which the rest can pay, held."""
    await ledger.grant(domain.grant_movement("acct_ada", 5, "welcome", None), utcnow())
    holds = [audio_hold("job_4", 4), audio_hold("job_3", 3), audio_hold("job_1", 1)]

    outcomes = await asyncio.gather(*(ledger.reserve(h) for h in holds), return_exceptions=True)

    await books.check()
    assert outcomes[0] == holds[0]
    assert isinstance(outcomes[1], FailedPrecondition)
    assert (outcomes[1].reason, outcomes[1].message) == (
        "INSUFFICIENT_CREDITS",
        "this job needs 3 credits, 1 available",
    )
    assert outcomes[2] == holds[2]
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 0, 5)
    assert await balance_after(ledger) == {"job_4": 1, "job_1": 0}


async def test_concurrent_reserves_over_accounts_record_each_entry_with_its_balance_after(
    ledger: BillingStore, books: Books
) -> None:
    now = utcnow()
    for account_id in ("acct_ada", "acct_bob"):
        await ledger.grant(domain.grant_movement(account_id, 10, "welcome", None), now)
    holds = [
        audio_hold(f"job_{n}", n, account_id=("acct_bob", "acct_ada")[n % 2]) for n in range(1, 6)
    ]

    made = await asyncio.gather(*(ledger.reserve(hold) for hold in holds))

    await books.check()
    assert made == holds
    assert await balance_after(ledger, "acct_ada") == {"job_1": 9, "job_3": 6, "job_5": 1}
    assert await balance_after(ledger, "acct_bob") == {"job_2": 8, "job_4": 4}


async def test_concurrent_reserves_of_one_reference_make_one_hold(
    ledger: BillingStore, books: Books
) -> None:
    """Whatever each asked: the service refuses a replay that asks something else."""
    await ledger.grant(domain.grant_movement("acct_ada", 10, "welcome", None), utcnow())
    asked = [audio_hold("job_1", 2), audio_hold("job_1", 2), audio_hold("job_1", 3)]
    free = replace(asked[0], reference="job_free", amount=0, livemode=False)

    made = await asyncio.gather(*(ledger.reserve(hold) for hold in [*asked, free, free]))

    await books.check()
    assert made == [asked[0]] * 3 + [free] * 2
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 8, 2)
    assert await entry_kinds(ledger, "job_1") == [EntryKind.HOLD]


async def test_concurrent_resolutions_each_get_their_own_answer(
    ledger: BillingStore, books: Books
) -> None:
    await ledger.grant(domain.grant_movement("acct_ada", 10, "welcome", None), utcnow())
    for reference in ("job_1", "job_2", "job_3"):
        await ledger.reserve(audio_hold(reference, 2))

    def capture(amount: int | None) -> Any:
        return lambda held: domain.capture(held, amount)

    asked = [
        ("job_1", capture(1)),
        ("job_1", capture(1)),
        ("job_2", lambda _: domain.RELEASE),
        ("job_2", capture(None)),
        ("job_3", capture(5)),
        ("job_missing", capture(None)),
    ]
    outcomes = await asyncio.gather(
        *(ledger.resolve_hold(Resolving(ref, decide, utcnow())) for ref, decide in asked),
        return_exceptions=True,
    )

    await books.check()
    states = [getattr(outcome, "state", None) for outcome in outcomes]
    assert states[:4] == [HoldState.CAPTURED] * 2 + [HoldState.RELEASED] * 2
    assert outcomes[0] == outcomes[1]
    assert outcomes[0].captured_amount == 1  # type: ignore[union-attr]
    assert [getattr(o, "reason", None) for o in outcomes[4:]] == [
        "PARAMETER_INVALID",
        "HOLD_NOT_FOUND",
    ]
    assert (await ledger.get_hold("job_3")).state is HoldState.HELD
    assert await ledger.get_balance("acct_ada") == Balance("acct_ada", 7, 2)
    assert await entry_kinds(ledger, "job_1") == [EntryKind.HOLD, EntryKind.CAPTURE]
