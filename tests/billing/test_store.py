from datetime import timedelta
from typing import Any

import grpc
import pytest

from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.errors import remote_error
from magicpixels.core.timestamps import utcnow
from magicpixels.services.billing import domain, store
from magicpixels.services.billing.domain import HoldState
from tests.billing.conftest import Books


async def test_expire_holds_returns_the_credits_of_overdue_holds(
    billing: Any, books: Books
) -> None:
    await billing.Grant(billing_pb2.GrantRequest(account_id="acct_ada", amount=5))
    for reference in ("job_old", "job_kept"):
        usage = billing_pb2.Usage(mode="text_to_image")
        await billing.Reserve(
            billing_pb2.ReserveRequest(
                account_id="acct_ada", reference=reference, usage=usage, livemode=True
            )
        )
    await billing.Capture(billing_pb2.CaptureRequest(reference="job_kept"))
    overdue_at = utcnow() + timedelta(days=8)

    expired = await store.expire_holds(books.engine, overdue_at)
    await books.check()

    assert [(hold.reference, hold.state, hold.resolved_at) for hold in expired] == [
        ("job_old", HoldState.EXPIRED, overdue_at)
    ]
    assert await store.expire_holds(books.engine, overdue_at) == []
    assert await store.get_balance(books.engine, "acct_ada") == domain.Balance("acct_ada", 4, 0)


async def test_an_expired_hold_counts_as_released_but_cannot_be_captured(
    billing: Any, books: Books
) -> None:
    now = utcnow()
    await store.grant(books.engine, domain.grant_movement("acct_ada", 1, "welcome", None), now)
    await store.reserve(
        books.engine, domain.new_hold("acct_ada", "job_1", 1, True, now, timedelta(0))
    )
    await store.expire_holds(books.engine, now)

    released = await billing.Release(billing_pb2.ReleaseRequest(reference="job_1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.Capture(billing_pb2.CaptureRequest(reference="job_1"))

    assert released.state == billing_pb2.HOLD_STATE_EXPIRED
    assert remote_error(caught.value).reason == "HOLD_ALREADY_RESOLVED"
    assert await store.get_balance(books.engine, "acct_ada") == domain.Balance("acct_ada", 1, 0)
