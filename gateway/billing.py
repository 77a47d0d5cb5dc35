"""Credits and plans: the public price table and plans, the account's ledger, its subscription.

Prices and plans are public: they answer without a key. Subscribing and canceling change what
the account pays, so they need the `keys:write` scope (the account administrator's) and a live
key. A test-mode key's ledger is empty: test mode is free and never touches live credits.
"""

from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict

from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.errors import RemoteError, remote_error
from magicpixels.gateway.bodies import Body
from magicpixels.gateway.errors import ApiError, from_remote
from magicpixels.gateway.listing import Page, list_object, page
from magicpixels.gateway.principal import Principal, require, require_live
from magicpixels.gateway.render import timestamp
from magicpixels.gateway.state import gateway

router = APIRouter(prefix="/v1", tags=["credits"])

_UNITS = {billing_pb2.PRICE_UNIT_JOB: "job", billing_pb2.PRICE_UNIT_SECOND: "second"}
_STATUSES = {
    billing_pb2.SUBSCRIPTION_STATUS_PENDING: "pending",
    billing_pb2.SUBSCRIPTION_STATUS_ACTIVE: "active",
    billing_pb2.SUBSCRIPTION_STATUS_CANCELED: "canceled",
}
# Entries whose reference is a job id.
_JOB_KINDS = {
    billing_pb2.LEDGER_ENTRY_KIND_HOLD,
    billing_pb2.LEDGER_ENTRY_KIND_CAPTURE,
    billing_pb2.LEDGER_ENTRY_KIND_RELEASE,
    billing_pb2.LEDGER_ENTRY_KIND_EXPIRY,
}


class SubscriptionCreate(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    plan: str


def price(found: billing_pb2.Price) -> dict[str, Any]:
    return {
        "object": "price",
        "id": found.mode,
        "mode": found.mode,
        "aliases": list(found.aliases),
        "credits": found.credits,
        "unit": _UNITS[found.unit],
        "unit_block": found.unit_block,
        "description": found.description,
    }


def plan(found: billing_pb2.Plan) -> dict[str, Any]:
    return {
        "object": "plan",
        "id": found.id,
        "name": found.name,
        "credits_per_period": found.credits_per_period,
        "period_days": found.period_days,
        "price_cents": found.price_cents,
        "currency": found.currency,
    }


def ledger_entry(entry: billing_pb2.LedgerEntry) -> dict[str, Any]:
    kind = billing_pb2.LedgerEntryKind.Name(entry.kind).removeprefix("LEDGER_ENTRY_KIND_")
    return {
        "object": "ledger_entry",
        "id": entry.id,
        "type": kind.lower(),
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "job_id": entry.reference if entry.kind in _JOB_KINDS else None,
        "description": entry.description,
        "created_at": timestamp(entry, "create_time"),
    }


def subscription(found: billing_pb2.Subscription) -> dict[str, Any]:
    return {
        "object": "subscription",
        "id": found.id,
        "plan": found.plan_id,
        "status": _STATUSES[found.status],
        "current_period_start": timestamp(found, "current_period_start_time"),
        "current_period_end": timestamp(found, "current_period_end_time"),
        "cancel_at_period_end": found.cancel_at_period_end,
        "canceled_at": timestamp(found, "cancel_time"),
        "ended_at": timestamp(found, "end_time"),
        "created_at": timestamp(found, "create_time"),
    }


@router.get("/pricing")
async def get_pricing(request: Request, listing: Annotated[Page, Depends(page)]) -> dict[str, Any]:
    """What each mode costs in credits: `credits` per job, or per started `unit_block`
    seconds of the requested duration."""
    found = await gateway(request).billing.ListPrices(billing_pb2.ListPricesRequest())
    return listing.of([price(each) for each in found.prices])


@router.get("/plans")
async def list_plans(request: Request, listing: Annotated[Page, Depends(page)]) -> dict[str, Any]:
    """The plans on offer: the credits each refills per period, and its price."""
    found = await gateway(request).billing.ListPlans(billing_pb2.ListPlansRequest())
    return listing.of([plan(each) for each in found.plans])


@router.get("/credits/ledger")
async def list_ledger_entries(
    request: Request,
    principal: Annotated[Principal, Depends(require("account:read"))],
    listing: Annotated[Page, Depends(page)],
) -> dict[str, Any]:
    """Every change of the account's live credits, newest first."""
    if not principal.livemode:
        return list_object([], "")
    found = await gateway(request).billing.ListLedgerEntries(
        billing_pb2.ListLedgerEntriesRequest(account_id=principal.account_id, **listing.rpc)
    )
    return list_object([ledger_entry(e) for e in found.ledger_entries], found.next_page_token)


@router.get("/subscription")
async def get_subscription(
    request: Request, principal: Annotated[Principal, Depends(require("account:read"))]
) -> dict[str, Any]:
    """The account's subscription, an ended one included; 404 when it never subscribed."""
    found = await gateway(request).billing.GetSubscription(
        billing_pb2.GetSubscriptionRequest(account_id=principal.account_id)
    )
    return subscription(found)


@router.post("/subscription")
async def subscribe(
    body: SubscriptionCreate,
    request: Request,
    principal: Annotated[Principal, Depends(require("keys:write"))],
) -> dict[str, Any]:
    """Subscribes to a plan, or changes to it. A plan with a price stays `pending` until its
    payment is approved; its credits come when its period starts. Subscribing again to the
    running plan changes nothing (and undoes a cancellation at period end)."""
    require_live(principal, "change the subscription")
    call = gateway(request).billing.Subscribe(
        billing_pb2.SubscribeRequest(account_id=principal.account_id, plan_id=body.plan)
    )
    try:
        return subscription(await call)
    except grpc.aio.AioRpcError as error:
        remote = remote_error(error)
        if remote.metadata.get("param") != "plan_id":
            raise
        raise _named_plan(remote) from None


@router.post("/subscription/cancel")
async def cancel_subscription(
    request: Request, principal: Annotated[Principal, Depends(require("keys:write"))]
) -> dict[str, Any]:
    """Cancels at the end of the running period, which is not refilled again; a pending
    subscription ends at once."""
    require_live(principal, "change the subscription")
    found = await gateway(request).billing.CancelSubscription(
        billing_pb2.CancelSubscriptionRequest(account_id=principal.account_id)
    )
    return subscription(found)


def _named_plan(remote: RemoteError) -> ApiError:
    """Billing names the plan `plan_id`; the body names it `plan`."""
    mapped = from_remote(remote)
    mapped.param = "plan"
    return mapped
