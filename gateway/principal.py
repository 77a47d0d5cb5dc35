"""Who a request speaks for: the bearer token verified by auth, cached a few seconds.

A cached principal is dropped as soon as auth announces its key's revocation on the bus (Redis
pub/sub across gateways, in-process in embedded mode), so a revoked key stops working
everywhere well within a second rather than when its cache entry expires. While this gateway
is not subscribed to those announcements (starting, or Redis unreachable) it caches nothing.
"""

import hmac
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import Scope

from magicpixels.auth.v1 import auth_pb2
from magicpixels.core.bus import EventBus
from magicpixels.core.errors import DomainError
from magicpixels.gateway.errors import ApiError
from magicpixels.gateway.hinted import HintedCache, follow
from magicpixels.services.auth.domain import REVOKED_KEYS_CHANNEL

# Where the rate limiter leaves a request's principal, or the error its token met, for the route.
_RESOLVED = "principal"


@dataclass(frozen=True)
class Principal:
    account_id: str
    api_key_id: str
    livemode: bool
    scopes: frozenset[str]


class PrincipalCache(HintedCache[tuple[str, Principal]]):
    """Verified tokens by key id for `ttl` seconds, never past the key's expiry, dropped when
    auth announces the key's revocation."""

    def get_principal(self, key_id: str, token: str) -> Principal | None:
        entry = self.get(key_id)
        if entry is None or not hmac.compare_digest(entry[0], token):
            return None
        return entry[1]

    def put_verified(
        self, key_id: str, token: str, verified: auth_pb2.Principal, ticket: int
    ) -> Principal:
        principal = Principal(
            verified.account_id, verified.api_key_id, verified.livemode, frozenset(verified.scopes)
        )
        ttl = None
        if verified.HasField("expire_time"):
            ttl = verified.expire_time.seconds - time.time()
        self.put(key_id, (token, principal), ticket, ttl)
        return principal


async def follow_revocations(bus: EventBus, cache: PrincipalCache) -> None:
    """Drops each key from the cache as auth announces its revocation, until cancelled."""
    await follow(bus, REVOKED_KEYS_CHANNEL, cache, lambda key_id: cache.drop(key_id.decode()))


def presented_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def bearer_token(request: Request) -> str:
    token = presented_token(request.headers.get("authorization", ""))
    if token is None:
        raise ApiError(
            401,
            "authentication_error",
            "api_key_missing",
            "Send your API key as 'Authorization: Bearer <token>'.",
        )
    return token


async def remember_principal(
    scope: Scope, resolve: Callable[[str], Awaitable[Principal]]
) -> Principal | None:
    """The principal of the request's token, resolved once and kept in the request for its
    route; None when it has no token or an invalid one (the route then says why)."""
    token = presented_token(Headers(scope=scope).get("authorization", ""))
    if token is None:
        return None
    state = scope.setdefault("state", {})
    try:
        found = await resolve(token)
    except (DomainError, grpc.aio.AioRpcError) as refused:
        state[_RESOLVED] = refused
        return None
    state[_RESOLVED] = found
    return found


def resolved_principal(scope: Scope) -> Principal | None:
    """The principal the rate limiter resolved for the request, if its token was valid."""
    found = scope.get("state", {}).get(_RESOLVED)
    return found if isinstance(found, Principal) else None


async def authorize(request: Request, scope: str) -> Principal:
    """The request's principal, which must hold `scope`."""
    found: Principal | Exception | None = request.scope.get("state", {}).get(_RESOLVED)
    if isinstance(found, Exception):
        raise found
    if found is None:
        found = await request.app.state.gateway.principal(bearer_token(request))
    require_scope(found, scope)
    return found


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise ApiError(
            403, "permission_error", "scope_missing", f"This API key lacks the '{scope}' scope."
        )


def require(scope: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A route dependency: the request's principal, which must hold `scope`."""

    async def principal(request: Request) -> Principal:
        return await authorize(request, scope)

    return principal


def require_live(principal: Principal, what: str) -> None:
    """Refuses a test-mode key what would touch live settings of the account."""
    if not principal.livemode:
        raise ApiError(
            403,
            "permission_error",
            "test_key_not_allowed",
            f"A test-mode API key cannot {what}; use a live key.",
        )
