"""Rate limits: GCRA's arithmetic, exactly N of N+k requests allowed in this process and in the
real Redis (concurrently, across limiters), the headers of every response, and a Redis that is
down failing open or closed as configured."""

import asyncio
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from magicpixels.gateway.errors import ApiError
from magicpixels.gateway.ratelimit import Decision, Limiter, LocalLimiter, Quota, RedisLimiter, gcra
from tests.gateway.test_auth import bearer, error_of, gateway_client, sign_up_as
from tests.support import REDIS_URL, Database

SECOND = 1_000_000  # microseconds
# Long enough that no request is earned back while a test runs.
HOUR = Quota(limit=5, period=3600)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused at once."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def unique(subject: str) -> str:
    """A subject no other test (or run sharing this Redis) spends from."""
    return f"test:{subject}:{secrets.token_hex(8)}"


def test_a_whole_quota_may_be_spent_at_once_and_then_one_interval_earns_one_more() -> None:
    quota = Quota(limit=4, period=2)
    tat, now, decisions = 0, 10 * SECOND, []
    for _ in range(5):
        decision, tat = gcra(quota, tat, now)
        decisions.append(decision)
    later, _ = gcra(quota, tat, now + SECOND // 2)

    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert [d.remaining for d in decisions] == [3, 2, 1, 0, 0]
    assert decisions[3].reset == 2.0  # the quota is whole again after the period
    assert decisions[4].retry_after == 0.5  # one interval
    assert later.allowed


def test_an_idle_subject_starts_with_a_whole_quota() -> None:
    quota = Quota(limit=100, period=1)

    decision, tat = gcra(quota, tat_us=0, now_us=5 * SECOND)

    assert (decision.allowed, decision.remaining) == (True, 99)
    assert tat == 5 * SECOND + 10_000


def test_the_headers_of_a_refusal_say_when_to_retry() -> None:
    allowed = Decision(True, 10, 3, reset=0.2, retry_after=0)
    refused = Decision(False, 10, 0, reset=59.5, retry_after=0.1)

    assert allowed.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "3",
        "RateLimit-Reset": "1",
    }
    assert refused.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "60",
        "Retry-After": "1",
    }


async def test_the_local_limiter_allows_exactly_the_limit_per_subject() -> None:
    limiter = LocalLimiter()

    first = [await limiter.check("key:a", HOUR) for _ in range(8)]
    other = await limiter.check("key:b", HOUR)

    assert [d.allowed for d in first] == [True] * 5 + [False] * 3
    assert other.allowed


@pytest.mark.redis
async def test_redis_allows_exactly_n_of_n_plus_k_concurrent_requests_across_gateways() -> None:
    limiters = [RedisLimiter(REDIS_URL) for _ in range(3)]
    subject = unique("key")
    try:
        decisions = await asyncio.gather(
            *(limiters[n % 3].check(subject, HOUR) for n in range(HOUR.limit + 7))
        )
    finally:
        for limiter in limiters:
            await limiter.close()

    assert sum(d.allowed for d in decisions) == HOUR.limit
    assert sorted(d.remaining for d in decisions if d.allowed) == [0, 1, 2, 3, 4]
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after > 0 and d.remaining == 0 for d in refused)


async def test_an_unreachable_redis_fails_open_to_this_gateways_own_limit(
    closed_port: int,
) -> None:
    limiter = Limiter(f"redis://127.0.0.1:{closed_port}/0", fail_open=True)
    try:
        decisions = [await limiter.check("key:a", HOUR) for _ in range(6)]
    finally:
        await limiter.close()

    assert [d.allowed for d in decisions] == [True] * 5 + [False]


async def test_an_unreachable_redis_fails_closed_with_503_when_so_configured(
    closed_port: int,
) -> None:
    limiter = Limiter(f"redis://127.0.0.1:{closed_port}/0", fail_open=False)
    try:
        with pytest.raises(ApiError) as caught:
            await limiter.check("key:a", HOUR)
    finally:
        await limiter.close()

    assert (caught.value.status, caught.value.code) == (503, "service_unavailable")
    assert caught.value.headers == {"Retry-After": "1"}


async def test_the_redis_limiter_itself_raises_when_redis_is_down(closed_port: int) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port}/0")
    try:
        with pytest.raises(RedisConnectionError):
            await limiter.check("key:a", HOUR)
    finally:
        await limiter.close()


def limits(response: httpx.Response) -> tuple[str, str, str]:
    headers = response.headers
    return (
        headers["ratelimit-limit"],
        headers["ratelimit-remaining"],
        headers["ratelimit-reset"],
    )


@pytest.mark.parametrize("redis_url", [None, pytest.param(REDIS_URL, marks=pytest.mark.redis)])
async def test_a_key_gets_exactly_its_limit_then_429_with_retry_after(
    database: Database, tmp_path: Path, redis_url: str | None
) -> None:
    per_key = {"rate_limit_per_key": 3, "rate_limit_per_key_seconds": 3600}
    async with gateway_client(database, tmp_path / "mesh", redis_url=redis_url, **per_key) as (
        _,
        client,
    ):
        token = (await sign_up_as(client))["api_key"]["token"]
        responses = await asyncio.gather(
            *(client.get("/v1/api_keys", headers=bearer(token)) for _ in range(5))
        )
        health = await client.get("/healthz")

    allowed = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(allowed) == 3
    assert sorted(limits(r)[1] for r in allowed) == ["0", "1", "2"]
    assert {limits(r)[0] for r in responses} == {"3"}
    assert [error_of(r) for r in refused] == [(429, "rate_limited")] * 2
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert refused[0].json()["error"]["type"] == "rate_limit_error"
    assert "ratelimit-limit" not in health.headers


async def test_requests_without_a_valid_key_spend_from_their_ip(
    database: Database, tmp_path: Path
) -> None:
    per_ip = {"rate_limit_per_ip": 3, "rate_limit_per_ip_seconds": 3600}
    async with gateway_client(database, tmp_path / "mesh", **per_ip) as (_, client):
        signup = await client.post("/v1/accounts", json={"email": "ada@example.com"})
        bad_key = await client.get("/v1/api_keys", headers=bearer("mp_live_nope"))
        no_key = await client.get("/v1/account")
        refused = await client.post("/v1/accounts", json={"email": "bob@example.com"})
        token = signup.json()["api_key"]["token"]
        with_key = await client.get("/v1/api_keys", headers=bearer(token))
        # A signup spends from its address whatever key it carries.
        keyed_signup = await client.post(
            "/v1/accounts", json={"email": "eve@example.com"}, headers=bearer(token)
        )

    assert [limits(r)[1] for r in (signup, bad_key, no_key)] == ["2", "1", "0"]
    assert error_of(bad_key) == (401, "api_key_invalid")  # limited, and then told why
    assert error_of(no_key) == (401, "api_key_missing")
    assert error_of(refused) == (429, "rate_limited")
    assert with_key.status_code == 200  # a valid key has its own quota
    assert error_of(keyed_signup) == (429, "rate_limited")


@pytest.mark.parametrize(("failure", "status"), [("open", 201), ("closed", 503)])
async def test_the_gateway_with_redis_down_fails_as_configured(
    database: Database, tmp_path: Path, closed_port: int, failure: str, status: int
) -> None:
    async with gateway_client(
        database,
        tmp_path / "mesh",
        redis_url=f"redis://127.0.0.1:{closed_port}/0",
        rate_limit_redis_failure=failure,
    ) as (_, client):
        response = await client.post("/v1/accounts", json={"email": "ada@example.com"})

    assert response.status_code == status, response.text
    if failure == "open":
        assert limits(response)[0] == "300"
    else:
        assert error_of(response) == (503, "service_unavailable")
        assert response.headers["retry-after"] == "1"


async def test_the_mcp_endpoint_is_limited_per_key_apart_from_the_api_and_per_ip_without_one(
    database: Database, tmp_path: Path
) -> None:
    """A bad token cannot flood /mcp (its IP's quota), and a key's MCP requests have a quota of
    their own: the API calls its tools make spend the key's /v1 quota, once."""
    quotas = {"rate_limit_per_ip": 2, "rate_limit_per_key": 2, "rate_limit_per_ip_seconds": 3600}
    quotas["rate_limit_per_key_seconds"] = 3600
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    mcp_headers = {"Accept": "application/json, text/event-stream"}
    async with gateway_client(database, tmp_path / "mesh", **quotas) as (_, client):
        token = (await sign_up_as(client))["api_key"]["token"]  # spends one of the IP's two
        strangers = [
            await client.post("/mcp", json=ping, headers={**mcp_headers, **bearer("mp_live_x")})
            for _ in range(2)
        ]
        agent = [
            await client.post("/mcp", json=ping, headers={**mcp_headers, **bearer(token)})
            for _ in range(3)
        ]
        api = await client.get("/v1/api_keys", headers=bearer(token))

    assert [error_of(r) for r in strangers] == [(401, "api_key_invalid"), (429, "rate_limited")]
    assert [r.status_code for r in agent] == [200, 200, 429]
    assert [limits(r)[1] for r in agent[:2]] == ["1", "0"]
    assert (api.status_code, limits(api)[1]) == (200, "1")
