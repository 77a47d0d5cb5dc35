"""Accounts: signup, the account of the calling key, its webhook signing secret."""

import asyncio
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Request
from google.protobuf.duration_pb2 import Duration
from pydantic import ConfigDict

from magicpixels.auth.v1 import auth_pb2
from magicpixels.billing.v1 import billing_pb2
from magicpixels.gateway import idempotency, render
from magicpixels.gateway.bodies import Body
from magicpixels.gateway.principal import Principal, require, require_live
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import gateway

router = APIRouter(prefix="/v1", tags=["accounts"])


class AccountCreate(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    email: str
    name: str | None = None


@router.post("/accounts", status_code=201)
async def create_account(body: AccountCreate, request: Request) -> JSONResponse:
    """Creates an account with its first API key (every scope). The token is shown only here,
    and in the replays of the request when it had an Idempotency-Key (for 24 hours, to the
    same key and email)."""
    call = gateway(request).auth.CreateAccount(
        auth_pb2.CreateAccountRequest(
            email=body.email, name=body.name or "", idempotency_key=idempotency.key_of(request)
        )
    )
    created = await call
    balance = billing_pb2.Balance(account_id=created.account.id)
    payload = {
        "account": render.account(created.account, balance),
        "api_key": render.api_key(created.api_key, created.token),
        "webhook_secret": created.webhook_secret,
    }
    return JSONResponse(payload, status_code=201, headers=await idempotency.replay_headers(call))


@router.get("/account")
async def get_account(
    request: Request, principal: Annotated[Principal, Depends(require("account:read"))]
) -> dict[str, Any]:
    mesh = gateway(request)
    found, balance, plan = await asyncio.gather(
        mesh.auth.GetAccount(auth_pb2.GetAccountRequest(id=principal.account_id)),
        mesh.billing.GetBalance(billing_pb2.GetBalanceRequest(account_id=principal.account_id)),
        _subscribed_plan(request, principal.account_id),
    )
    return render.account(found, balance, plan)


async def _subscribed_plan(request: Request, account_id: str) -> str | None:
    """The plan of the account's active subscription (billing owns plans); None without one."""
    try:
        found = await gateway(request).billing.GetSubscription(
            billing_pb2.GetSubscriptionRequest(account_id=account_id)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return found.plan_id if found.status == billing_pb2.SUBSCRIPTION_STATUS_ACTIVE else None


class WebhookSecretRotate(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    # How long the replaced secret stays valid: 0..604800, 86400 when omitted.
    grace_period_seconds: int | None = None


@router.post("/account/webhook_secret/rotate")
async def rotate_webhook_secret(
    request: Request,
    principal: Annotated[Principal, Depends(require("keys:write"))],
    body: WebhookSecretRotate | None = None,
) -> dict[str, Any]:
    """A new webhook signing secret, shown only here; the replaced one keeps verifying until
    `previous_secret_expires_at`, and deliveries are signed with both until then."""
    require_live(principal, "rotate the account's webhook secret")
    grace = body.grace_period_seconds if body is not None else None
    rotated = await gateway(request).auth.RotateWebhookSecret(
        auth_pb2.RotateWebhookSecretRequest(
            account_id=principal.account_id,
            grace_period=None if grace is None else Duration(seconds=grace),
        )
    )
    return {
        "object": "webhook_secret",
        "secret": rotated.secret,
        "previous_secret_expires_at": render.timestamp(rotated, "previous_expire_time"),
    }
