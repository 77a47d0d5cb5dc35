"""Billing's metrics: credits captured and released are counted once per hold, and the held
credits (and those past their expiry) are measured from the holds."""

from datetime import timedelta
from typing import Any

from prometheus_client import REGISTRY

from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.timestamps import utcnow
from magicpixels.services.billing.store import BillingStore
from tests.billing.test_store import reserve


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": "billing"}) or 0.0


async def test_a_resolution_is_counted_once_however_often_it_is_asked(billing: Any) -> None:
    await billing.Grant(billing_pb2.GrantRequest(account_id="acct_ada", amount=5))
    paid, given_back = await reserve(billing, "job_paid"), await reserve(billing, "job_back")
    captured = counted("magicpixels_credits_captured_total")
    released = counted("magicpixels_credits_released_total")
    for _ in range(2):  # a retried call resolves nothing again
        await billing.Capture(billing_pb2.CaptureRequest(reference="job_paid"))
        await billing.Release(billing_pb2.ReleaseRequest(reference="job_back"))
    assert counted("magicpixels_credits_captured_total") - captured == paid.amount
    assert counted("magicpixels_credits_released_total") - released == given_back.amount


async def test_held_credits_and_those_past_expiry(billing: Any, ledger: BillingStore) -> None:
    await billing.Grant(billing_pb2.GrantRequest(account_id="acct_ada", amount=5))
    kept, paid = await reserve(billing, "job_kept"), await reserve(billing, "job_paid")
    await billing.Capture(billing_pb2.CaptureRequest(reference="job_paid"))
    assert paid.amount > 0
    now = utcnow()
    assert await ledger.held_credits(now) == (kept.amount, 0)
    assert await ledger.held_credits(now + timedelta(days=8)) == (kept.amount, kept.amount)
