"""Rate limits: GCRA per API key, or per client IP for a request without a valid key.

In a cluster the state lives in Redis and one Lua script decides atomically, so every gateway
shares each quota; in embedded mode it lives in this process. When Redis cannot be reached, a
setting chooses: fail open (this gateway limits on its own until Redis answers again) or fail
closed (503). Every /v1 response carries `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset`; a refused request gets 429 `rate_limited` with `Retry-After`.

GCRA keeps one number per subject, the theoretical arrival time (TAT) of its next request: each
request moves it one interval (period / limit) later, and a request is refused when that would
put it more than one period ahead of now. Times are whole microseconds, so that Python and Lua
agree to the unit.
"""

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as redis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from magicpixels.core import metrics
from magicpixels.core.errors import Unavailable
from magicpixels.gateway.errors import ApiError, from_domain_error
from magicpixels.gateway.principal import Principal, remember_principal

log = structlog.get_logger("magicpixels.gateway")

_MICROS = 1_000_000
# A Redis that does not answer this fast is treated as down: the limiter is on every request.
_REDIS_TIMEOUT_SECONDS = 0.25
# After a Redis failure, how long requests skip it before it is tried again.
_REDIS_RETRY_SECONDS = 1.0
# Subjects tracked in memory before idle ones (whose quota is whole again) are forgotten.
_MAX_TRACKED = 100_000

# KEYS[1]: the subject's TAT; ARGV: interval, period (microseconds). Redis's clock, so that
# gateways with different clocks share one timeline. Returns allowed, ahead, retry_after.
_GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, tat - now, allow_at - now}
end
-- %.0f: Lua would write a number this large in exponent form, losing microseconds
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, new_tat - now, 0}
"""


@dataclass(frozen=True)
class Quota:
    """`limit` requests per `period` seconds, of which all may come at once."""

    limit: int
    period: float

    @property
    def period_us(self) -> int:
        return round(self.period * _MICROS)

    @property
    def interval_us(self) -> int:
        return self.period_us // self.limit


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    # Seconds until the quota is whole again, and until one more request would be allowed.
    reset: float
    retry_after: float

    @classmethod
    def of(cls, quota: Quota, allowed: bool, ahead_us: int, retry_after_us: int) -> "Decision":
        """`ahead_us`: how far the subject's TAT is ahead of now once this request is counted."""
        remaining = max(0, (quota.period_us - ahead_us) // quota.interval_us)
        return cls(allowed, quota.limit, remaining, ahead_us / _MICROS, retry_after_us / _MICROS)

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


def gcra(quota: Quota, tat_us: int, now_us: int) -> tuple[Decision, int]:
    """The decision on one request at `now_us`, and the subject's TAT after it."""
    tat_us = max(tat_us, now_us)
    new_tat = tat_us + quota.interval_us
    allow_at = new_tat - quota.period_us
    if now_us < allow_at:
        return Decision.of(quota, False, tat_us - now_us, allow_at - now_us), tat_us
    return Decision.of(quota, True, new_tat - now_us, 0), new_tat


class LocalLimiter:
    """GCRA in this process's memory."""

    def __init__(self) -> None:
        self._tats: dict[str, int] = {}

    async def check(self, subject: str, quota: Quota) -> Decision:
        now = time.monotonic_ns() // 1000
        decision, self._tats[subject] = gcra(quota, self._tats.get(subject, now), now)
        if len(self._tats) > _MAX_TRACKED:
            self._tats = {subject: tat for subject, tat in self._tats.items() if tat > now}
        return decision


class RedisLimiter:
    """GCRA in Redis, one atomic script per request."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=_REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=_REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # a failure falls back at once rather than waits
        )
        self._script = self._redis.register_script(_GCRA_SCRIPT)

    async def check(self, subject: str, quota: Quota) -> Decision:
        allowed, ahead, retry_after = await self._script(
            keys=[f"magicpixels:ratelimit:{subject}"], args=[quota.interval_us, quota.period_us]
        )
        return Decision.of(quota, bool(allowed), int(ahead), int(retry_after))

    async def close(self) -> None:
        await self._redis.aclose()


class Limiter:
    """The gateway's limiter: Redis when configured, else this process."""

    def __init__(self, redis_url: str | None, fail_open: bool) -> None:
        self._local = LocalLimiter()
        self._shared = RedisLimiter(redis_url) if redis_url else None
        self._fail_open = fail_open
        self._skip_shared_until = 0.0

    async def check(self, subject: str, quota: Quota) -> Decision:
        if self._shared is None:
            return await self._local.check(subject, quota)
        if time.monotonic() >= self._skip_shared_until:
            try:
                return await self._shared.check(subject, quota)
            except (RedisError, OSError):
                log.warning("rate_limiter_unreachable", fail_open=self._fail_open, exc_info=True)
                self._skip_shared_until = time.monotonic() + _REDIS_RETRY_SECONDS
        if self._fail_open:
            return await self._local.check(subject, quota)
        message = "the rate limiter is unavailable"
        raise from_domain_error(Unavailable("SERVICE_UNAVAILABLE", message))

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()


def rate_limited(decision: Decision) -> ApiError:
    return ApiError(
        429,
        "rate_limit_error",
        "rate_limited",
        f"Too many requests; retry in {decision.headers()['Retry-After']} s.",
        headers=decision.headers(),
    )


def client_ip(scope: Scope) -> str:
    """The peer's address (uvicorn puts a trusted proxy's X-Forwarded-For client there)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


# Unauthenticated routes whose quota no key may lift: a key sent with a signup would otherwise
# let one account's quota make accounts a hundred times as fast as an address may.
_PER_IP_ALWAYS = frozenset({("POST", "/v1/accounts")})


class RateLimitMiddleware:
    """Pure ASGI: each /v1 request spends from its API key's quota, or from its client IP's.

    The paths in `own_quota` (the MCP endpoint) are limited too, with a quota of their own per
    key: the API calls an MCP tool makes with the caller's key spend the key's /v1 quota, so a
    tool call is not counted twice against it. A request without a valid key spends its IP's.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: Limiter,
        per_key: Quota,
        per_ip: Quota,
        principal: Callable[[str], Awaitable[Principal]],
        own_quota: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self._limiter = limiter
        self._per_key = per_key
        self._per_ip = per_ip
        self._principal = principal
        self._own_quota = own_quota

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limited = scope["type"] == "http" and (
            scope["path"].startswith("/v1/") or scope["path"] in self._own_quota
        )
        if not limited:
            await self.app(scope, receive, send)
            return
        try:
            decision = await self._decide(scope)
            if not decision.allowed:
                metrics.RATE_LIMIT_REFUSALS.labels("gateway").inc()
                raise rate_limited(decision)
        except ApiError as refused:
            await refused.response()(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in decision.headers().items():
                    headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _decide(self, scope: Scope) -> Decision:
        if (scope["method"], scope["path"]) not in _PER_IP_ALWAYS:
            principal = await remember_principal(scope, self._principal)
            if principal is not None:
                kind = scope["path"] if scope["path"] in self._own_quota else "key"
                return await self._limiter.check(f"{kind}:{principal.api_key_id}", self._per_key)
        return await self._limiter.check(f"ip:{client_ip(scope)}", self._per_ip)
