"""API keys: create one (its token shown once), list them, revoke one.

A live key manages every key of its account, a test-mode key only test-mode keys; a new key
gets no scope that the key making it lacks (auth decides, from the issuing key).
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, ConfigDict, Field

from magicpixels.auth.v1 import auth_pb2
from magicpixels.core.timestamps import to_timestamp
from magicpixels.gateway import idempotency, render
from magicpixels.gateway.bodies import Body
from magicpixels.gateway.listing import Page, list_object, page
from magicpixels.gateway.principal import Principal, require
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import gateway

router = APIRouter(prefix="/v1", tags=["api keys"])

_MODES = {"live": auth_pb2.KEY_MODE_LIVE, "test": auth_pb2.KEY_MODE_TEST}


class ApiKeyCreate(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    mode: Literal["live", "test"]
    # Omitted: every scope of the key making this one.
    scopes: Annotated[list[str], Field(min_length=1)] | None = None
    # RFC 3339 with a time zone (or Unix seconds); JSON has no datetime type.
    expires_at: Annotated[AwareDatetime, Field(strict=False)] | None = None


def _visible_mode(principal: Principal) -> auth_pb2.KeyMode.ValueType:
    """The keys a key may see and revoke: all of them, or only test keys for a test key."""
    return auth_pb2.KEY_MODE_UNSPECIFIED if principal.livemode else auth_pb2.KEY_MODE_TEST


@router.post("/api_keys", status_code=201)
async def create_api_key(
    body: ApiKeyCreate,
    request: Request,
    principal: Annotated[Principal, Depends(require("keys:write"))],
) -> JSONResponse:
    """Creates a key; its `token` is in this response only, and in the replays of the request
    when it had an Idempotency-Key (for 24 hours, to the same issuing key)."""
    call = gateway(request).auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(
            account_id=principal.account_id,
            name=body.name,
            mode=_MODES[body.mode],
            scopes=body.scopes or [],
            expire_time=to_timestamp(body.expires_at),
            issuer_api_key_id=principal.api_key_id,
            idempotency_key=idempotency.key_of(request),
        )
    )
    created = await call
    headers = await idempotency.replay_headers(call)
    return JSONResponse(
        render.api_key(created.api_key, created.token), status_code=201, headers=headers
    )


@router.get("/api_keys")
async def list_api_keys(
    request: Request,
    principal: Annotated[Principal, Depends(require("account:read"))],
    listing: Annotated[Page, Depends(page)],
) -> dict[str, Any]:
    """The keys, newest first, revoked ones included; no secrets."""
    found = await gateway(request).auth.ListApiKeys(
        auth_pb2.ListApiKeysRequest(
            account_id=principal.account_id, mode=_visible_mode(principal), **listing.rpc
        )
    )
    data = [render.api_key(key) for key in found.api_keys]
    return list_object(data, found.next_page_token)


@router.delete("/api_keys/{key_id}")
async def revoke_api_key(
    key_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("keys:write"))],
) -> dict[str, Any]:
    """Revokes the key at once, everywhere; revoking it again changes nothing."""
    revoked = await gateway(request).auth.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(
            account_id=principal.account_id, id=key_id, mode=_visible_mode(principal)
        )
    )
    return render.api_key(revoked)
