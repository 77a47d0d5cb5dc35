"""Who a request speaks for: the bearer token verified by auth, cached a few seconds."""

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from magicpixels.auth.v1 import auth_pb2
from magicpixels.gateway.errors import ApiError

# A bound on the cache, so a flood of distinct bad tokens cannot grow memory without end.
_MAX_CACHED = 100_000


@dataclass(frozen=True)
class Principal:
    account_id: str
    api_key_id: str
    livemode: bool
    scopes: frozenset[str]


class PrincipalCache:
    """Verified tokens for `ttl` seconds (never past the key's expiry): the hot path skips auth."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, token: str, verified: auth_pb2.Principal) -> Principal:
        principal = Principal(
            verified.account_id, verified.api_key_id, verified.livemode, frozenset(verified.scopes)
        )
        expires = time.monotonic() + self.ttl
        if verified.HasField("expire_time"):
            expires = min(expires, time.monotonic() + verified.expire_time.seconds - time.time())
        if len(self._entries) >= _MAX_CACHED:
            self._entries.clear()
        self._entries[token] = (expires, principal)
        return principal


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "authentication_error",
            "api_key_missing",
            "Send your API key as 'Authorization: Bearer <token>'.",
        )
    return token.strip()


async def authorize(request: Request, scope: str) -> Principal:
    """The request's principal, which must hold `scope`."""
    found: Principal = await request.app.state.gateway.principal(bearer_token(request))
    if scope not in found.scopes:
        raise ApiError(
            403, "permission_error", "scope_missing", f"This API key lacks the '{scope}' scope."
        )
    return found


def require(scope: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A route dependency: the request's principal, which must hold `scope`."""

    async def principal(request: Request) -> Principal:
        return await authorize(request, scope)

    return principal
