"""Keys over real HTTP: managing them, every shape of bad token, scopes, revocation reaching
other gateways through Redis, and no secret in any log line of a whole flow."""

import inspect
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from magicpixels.auth.v1 import auth_pb2
from magicpixels.core.settings import GatewaySettings, MeshSettings, load_or_create_secret
from magicpixels.gateway.principal import PrincipalCache
from magicpixels.gateway.state import Gateway
from magicpixels.mesh import RunningMesh, start_mesh
from magicpixels.services.auth import domain
from tests.gateway.conftest import API_EXAMPLE
from tests.support import REDIS_URL, Database, eventually, mesh_databases


def fastapi_app(running: RunningMesh) -> FastAPI:
    """The running gateway's app, under its middleware."""
    assert running.gateway is not None
    app: Any = running.gateway.config.app
    while not isinstance(app, FastAPI):
        app = app.app
    return app


def gateway_state(running: RunningMesh) -> Gateway:
    state: Gateway = fastapi_app(running).state.gateway
    return state


@asynccontextmanager
async def gateway_client(
    database: Database,
    data_dir: Path,
    only: tuple[str, ...] = ("auth",),
    redis_url: str | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[RunningMesh, httpx.AsyncClient]]:
    """A gateway (and the services `only` names) on a free port, with a client for it."""
    running = await start_mesh(
        MeshSettings(data_dir=data_dir, redis_url=redis_url),
        GatewaySettings(port=0, **settings),
        only=only,
        service_settings=mesh_databases(database, data_dir),
    )
    try:
        assert running.gateway is not None
        async with httpx.AsyncClient(base_url=running.gateway.settings.base_url()) as client:
            yield running, client
    finally:
        await running.stop()


@pytest.fixture
async def auth_gateway(
    database: Database, tmp_path: Path
) -> AsyncIterator[tuple[RunningMesh, httpx.AsyncClient]]:
    async with gateway_client(database, tmp_path / "mesh", key_cache_seconds=3600) as serving:
        await eventually(_following(serving[0]))
        yield serving


@pytest.fixture
def client(auth_gateway: tuple[RunningMesh, httpx.AsyncClient]) -> httpx.AsyncClient:
    return auth_gateway[1]


def _following(running: RunningMesh) -> Callable[[], Awaitable[bool]]:
    async def following() -> bool:
        return gateway_state(running).principals.following

    return following


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_up_as(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, Any]:
    response = await client.post("/v1/accounts", json={"email": email})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def new_key(client: httpx.AsyncClient, token: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "ci", "mode": "live", **fields}
    response = await client.post("/v1/api_keys", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


def error_of(response: httpx.Response) -> tuple[int, str]:
    error = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    return response.status_code, error["code"]


async def test_a_key_is_created_with_its_token_once_listed_without_it_and_revoked(
    client: httpx.AsyncClient,
) -> None:
    token = (await sign_up_as(client))["api_key"]["token"]
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)

    made = await new_key(
        client, token, name="ci", mode="test", scopes=["jobs:read"], expires_at=expires.isoformat()
    )
    listed = await client.get("/v1/api_keys", headers=bearer(made["token"]))
    revoked = await client.delete(f"/v1/api_keys/{made['id']}", headers=bearer(token))
    after = await client.get("/v1/api_keys", headers=bearer(made["token"]))

    assert made["token"].startswith(made["prefix"].removesuffix("..."))
    assert domain.TOKEN_PATTERN.fullmatch(made["token"])
    assert (made["object"], made["name"], made["mode"], made["scopes"]) == (
        "api_key",
        "ci",
        "test",
        ["jobs:read"],
    )
    assert made["expires_at"] == expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert error_of(listed) == (403, "scope_missing")  # jobs:read only
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert "token" not in revoked.json()
    assert error_of(after) == (401, "api_key_revoked")


async def test_keys_are_listed_newest_first_in_pages_without_secrets(
    client: httpx.AsyncClient,
) -> None:
    first = (await sign_up_as(client))["api_key"]
    made = [await new_key(client, first["token"], name=f"k{n}") for n in range(3)]
    auth = bearer(first["token"])

    page = (await client.get("/v1/api_keys", params={"limit": 2}, headers=auth)).json()
    rest = (
        await client.get(
            "/v1/api_keys",
            params={"limit": 2, "starting_after": page["next_cursor"]},
            headers=auth,
        )
    ).json()

    assert [key["name"] for key in page["data"]] == ["k2", "k1"]
    assert (page["object"], page["has_more"], page["next_cursor"]) == ("list", True, made[1]["id"])
    assert [key["id"] for key in rest["data"]] == [made[0]["id"], first["id"]]
    assert (rest["has_more"], rest["next_cursor"]) == (False, None)
    listed = str(page) + str(rest)
    assert all(key["token"] not in listed for key in [*made, first])
    assert all(key["prefix"].startswith("mp_live_") for key in page["data"])


@pytest.mark.parametrize("limit", [0, 101, "x"])
async def test_a_list_limit_outside_1_to_100_is_refused(
    client: httpx.AsyncClient, limit: object
) -> None:
    token = (await sign_up_as(client))["api_key"]["token"]

    response = await client.get("/v1/api_keys", params={"limit": limit}, headers=bearer(token))

    assert error_of(response) == (400, "parameter_invalid")
    assert response.json()["error"]["param"] == "limit"


async def test_another_accounts_key_is_not_found_like_a_missing_one(
    client: httpx.AsyncClient,
) -> None:
    ada = (await sign_up_as(client, "ada@example.com"))["api_key"]
    bob = (await sign_up_as(client, "bob@example.com"))["api_key"]

    foreign = await client.delete(f"/v1/api_keys/{ada['id']}", headers=bearer(bob["token"]))
    missing = await client.delete(f"/v1/api_keys/key_{'0' * 30}", headers=bearer(bob["token"]))
    still = await client.get("/v1/api_keys", headers=bearer(ada["token"]))

    assert error_of(foreign) == error_of(missing) == (404, "api_key_not_found")
    assert foreign.json()["error"]["message"] == f"no API key {ada['id']}"
    assert still.status_code == 200


async def test_a_test_key_manages_only_test_keys(client: httpx.AsyncClient) -> None:
    live = (await sign_up_as(client))["api_key"]
    test = await new_key(client, live["token"], mode="test")

    listed = await client.get("/v1/api_keys", headers=bearer(test["token"]))
    live_from_test = await client.post(
        "/v1/api_keys", json={"name": "x", "mode": "live"}, headers=bearer(test["token"])
    )
    revoke_live = await client.delete(f"/v1/api_keys/{live['id']}", headers=bearer(test["token"]))
    test_from_test = await new_key(client, test["token"], mode="test")

    assert [key["id"] for key in listed.json()["data"]] == [test["id"]]
    assert error_of(live_from_test) == (403, "test_key_not_allowed")
    assert error_of(revoke_live) == (404, "api_key_not_found")
    assert test_from_test["mode"] == "test"


async def test_a_new_key_gets_no_scope_its_maker_lacks(client: httpx.AsyncClient) -> None:
    token = (await sign_up_as(client))["api_key"]["token"]
    narrow = await new_key(client, token, scopes=["keys:write", "jobs:read"])

    inherited = await new_key(client, narrow["token"])
    wider = await client.post(
        "/v1/api_keys",
        json={"name": "x", "mode": "live", "scopes": ["jobs:write"]},
        headers=bearer(narrow["token"]),
    )

    assert inherited["scopes"] == ["jobs:read", "keys:write"]
    assert error_of(wider) == (403, "scope_missing")
    assert wider.json()["error"]["param"] == "scopes"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "mode": "prod"}, "mode"),
        ({"name": "x"}, "mode"),
        ({"name": "x", "mode": "live", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "mode": "live", "scopes": []}, "scopes"),
        ({"name": "x", "mode": "live", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"name": "x", "mode": "live", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x" * 201, "mode": "live"}, "name"),
        ({"name": "x", "mode": "live", "owner": "me"}, "owner"),
    ],
)
async def test_an_invalid_key_request_is_400_naming_the_parameter(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    token = (await sign_up_as(client))["api_key"]["token"]

    response = await client.post("/v1/api_keys", json=body, headers=bearer(token))

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# Routes that take no key, or take one only when they are not given a signed URL.
PUBLIC_ROUTES = {
    ("POST", "/v1/accounts"),
    ("GET", "/v1/pricing"),
    ("GET", "/v1/plans"),
    ("GET", "/v1/assets/{asset_id}/content"),
    ("HEAD", "/v1/assets/{asset_id}/content"),
}


def api_routes(routes: list[BaseRoute]) -> list[APIRoute]:
    """The routes, those of included routers among them (FastAPI keeps each router whole)."""
    found: list[APIRoute] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        found += api_routes(included.routes) if included else []
        found += [route] if isinstance(route, APIRoute) else []
    return found


def scoped_routes(app: FastAPI) -> dict[tuple[str, str], list[str]]:
    """Each /v1 route's method and path, and the scopes its `require` dependencies name."""
    routes = {}
    for route in api_routes(app.routes):
        if not route.path.startswith("/v1/"):
            continue
        scopes = [
            inspect.getclosurevars(dependency.call).nonlocals["scope"]
            for dependency in route.dependant.dependencies
            if getattr(dependency.call, "__qualname__", "") == "require.<locals>.principal"
        ]
        routes.update({(method, route.path): scopes for method in route.methods})
    return routes


def test_every_route_but_the_public_ones_requires_one_scope(
    auth_gateway: tuple[RunningMesh, httpx.AsyncClient],
) -> None:
    routes = scoped_routes(fastapi_app(auth_gateway[0]))

    unscoped = {route for route, scopes in routes.items() if len(scopes) != 1}

    assert unscoped == PUBLIC_ROUTES
    assert routes[("DELETE", "/v1/api_keys/{key_id}")] == ["keys:write"]
    assert routes[("GET", "/v1/api_keys")] == ["account:read"]
    assert {scope for scopes in routes.values() for scope in scopes} <= set(domain.SCOPES)


async def test_a_key_without_the_routes_scope_is_refused_on_every_route(
    auth_gateway: tuple[RunningMesh, httpx.AsyncClient],
) -> None:
    running, client = auth_gateway
    token = (await sign_up_as(client))["api_key"]["token"]
    lacking = {
        scope: (await new_key(client, token, scopes=[s for s in domain.SCOPES if s != scope]))
        for scope in domain.SCOPES
    }
    routes = {
        route: scopes[0] for route, scopes in scoped_routes(fastapi_app(running)).items() if scopes
    }
    routes[("GET", "/v1/assets/{asset_id}/content")] = "assets:read"  # when not signed

    outcomes = {}
    for (method, path), scope in routes.items():
        url = re.sub(r"{\w+}", "x", path)
        response = await client.request(method, url, headers=bearer(lacking[scope]["token"]))
        outcomes[method, path] = (error_of(response), scope in response.json()["error"]["message"])

    assert outcomes == {route: ((403, "scope_missing"), True) for route in routes}


def _token(mode: str, key_id: str, secret: str) -> str:
    return domain.format_token(mode, key_id, secret)  # type: ignore[arg-type]


async def test_bad_tokens_of_every_shape_are_401_with_their_code(
    client: httpx.AsyncClient,
) -> None:
    created = await sign_up_as(client)
    token = created["api_key"]["token"]
    key_id, secret = domain.parse_token(token)[1:]
    revoked = await new_key(client, token)
    await client.delete(f"/v1/api_keys/{revoked['id']}", headers=bearer(token))
    typo = "A" if token[-1] != "A" else "B"
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "no header": ({}, "api_key_missing"),
        "empty": ({"Authorization": ""}, "api_key_missing"),
        "no token": ({"Authorization": "Bearer"}, "api_key_missing"),
        "another scheme": ({"Authorization": f"Basic {token}"}, "api_key_missing"),
        "wrong prefix": (bearer(token.replace("mp_live_", "sk_live_")), "api_key_invalid"),
        "bad checksum": (bearer(token[:-1] + typo), "api_key_invalid"),
        "unknown id": (bearer(_token("live", "key_" + "Z" * 30, secret)), "api_key_invalid"),
        "wrong secret": (bearer(_token("live", key_id, secret[::-1])), "api_key_invalid"),
        "other mode": (bearer(_token("test", key_id, secret)), "api_key_invalid"),
        "revoked": (bearer(revoked["token"]), "api_key_revoked"),
        "whitespace inside": (bearer(f"{token[:20]} {token[20:]}"), "api_key_invalid"),
        "very long": (bearer(token * 100), "api_key_invalid"),
        "non-ASCII": ({"Authorization": f"Bearer {token[:-1]}é".encode()}, "api_key_invalid"),
    }

    outcomes = {
        name: error_of(await client.get("/v1/api_keys", headers=headers))
        for name, (headers, _) in cases.items()
    }

    assert outcomes == {name: (401, code) for name, (_, code) in cases.items()}


async def test_an_expired_key_is_refused_once_its_time_passes(client: httpx.AsyncClient) -> None:
    token = (await sign_up_as(client))["api_key"]["token"]
    expires = datetime.now(UTC) + timedelta(seconds=1)
    made = await new_key(client, token, expires_at=expires.isoformat())
    first = await client.get("/v1/api_keys", headers=bearer(made["token"]))

    async def expired() -> bool:
        response = await client.get("/v1/api_keys", headers=bearer(made["token"]))
        return response.status_code == 401

    await eventually(expired)  # the cache keeps it a whole hour, but never past its expiry
    response = await client.get("/v1/api_keys", headers=bearer(made["token"]))
    assert first.status_code == 200
    assert error_of(response) == (401, "api_key_expired")


async def test_a_malformed_token_is_refused_by_the_gateway_without_asking_auth(
    database: Database, tmp_path: Path
) -> None:
    async with gateway_client(database, tmp_path / "mesh", only=()) as (_, client):
        token = _token("live", "key_" + "A" * 30, "s" * 43)
        well_formed = await client.get("/v1/api_keys", headers=bearer(token))
        mistyped = await client.get("/v1/api_keys", headers=bearer(token[:-1] + "x"))

    assert error_of(well_formed) == (503, "service_unavailable")  # auth is not running
    assert error_of(mistyped) == (401, "api_key_invalid")


async def test_a_revoked_key_is_dropped_from_the_cache_at_once(
    auth_gateway: tuple[RunningMesh, httpx.AsyncClient],
) -> None:
    running, client = auth_gateway
    token = (await sign_up_as(client))["api_key"]["token"]
    spare = await new_key(client, token)
    parsed = domain.parse_token(spare["token"])
    assert (await client.get("/v1/api_keys", headers=bearer(spare["token"]))).status_code == 200
    cache = gateway_state(running).principals
    assert cache.get_principal(parsed.key_id, spare["token"]) is not None  # cached for an hour

    await client.delete(f"/v1/api_keys/{spare['id']}", headers=bearer(token))

    await eventually(lambda: _gone(cache, parsed.key_id, spare["token"]))
    response = await client.get("/v1/api_keys", headers=bearer(spare["token"]))
    assert error_of(response) == (401, "api_key_revoked")


async def _gone(cache: PrincipalCache, key_id: str, token: str) -> bool:
    return cache.get_principal(key_id, token) is None


@pytest.mark.redis
async def test_a_key_revoked_through_one_gateway_fails_through_another(
    database: Database, tmp_path: Path
) -> None:
    """The revocation reaches the other gateway as an announcement on Redis that drops its
    cached principal (an hour's worth); how fast, bench/auth.py measures."""
    data_dir = tmp_path / "mesh"
    cached = {"key_cache_seconds": 3600, "redis_url": REDIS_URL}
    async with (
        gateway_client(database, data_dir, **cached) as (first, one),
        gateway_client(database, data_dir, only=(), **cached) as (second, other),
    ):
        await eventually(_following(first))
        await eventually(_following(second))
        token = (await sign_up_as(one))["api_key"]["token"]
        spare = await new_key(one, token)
        assert (await other.get("/v1/api_keys", headers=bearer(spare["token"]))).status_code == 200
        parsed = domain.parse_token(spare["token"])
        cache = gateway_state(second).principals
        assert cache.get_principal(parsed.key_id, spare["token"]) is not None

        revoked = await one.delete(f"/v1/api_keys/{spare['id']}", headers=bearer(token))
        await eventually(lambda: _gone(cache, parsed.key_id, spare["token"]))
        refused = await other.get("/v1/api_keys", headers=bearer(spare["token"]))

    assert revoked.status_code == 200
    assert error_of(refused) == (401, "api_key_revoked")


async def test_a_gateway_that_cannot_hear_auth_caches_no_key(
    database: Database, tmp_path: Path
) -> None:
    """Two processes on in-process buses (no Redis), as `serve` runs them: auth's revocations
    never reach the second gateway, so a key it kept would stay usable for the cache's hour."""
    data_dir = tmp_path / "mesh"
    cached = {"key_cache_seconds": 3600}
    async with (
        gateway_client(database, data_dir, **cached) as (_, one),
        gateway_client(database, data_dir, only=(), **cached) as (_, other),
    ):
        token = (await sign_up_as(one))["api_key"]["token"]
        spare = await new_key(one, token)
        accepted = await other.get("/v1/api_keys", headers=bearer(spare["token"]))
        await one.delete(f"/v1/api_keys/{spare['id']}", headers=bearer(token))

        refused = await other.get("/v1/api_keys", headers=bearer(spare["token"]))

    assert accepted.status_code == 200
    assert error_of(refused) == (401, "api_key_revoked")


def test_a_verification_that_started_before_a_revocation_is_not_cached() -> None:
    cache = PrincipalCache(ttl=3600)
    cache.following = True
    verified = auth_pb2.Principal(account_id="acct_1", api_key_id="key_1", scopes=["jobs:read"])

    ticket = cache.ticket()
    cache.drop("key_1")  # announced while the verification was on its way
    answered = cache.put_verified("key_1", "token", verified, ticket)

    assert answered.account_id == "acct_1"
    assert cache.get_principal("key_1", "token") is None
    cache.put_verified("key_1", "token", verified, cache.ticket())
    assert cache.get_principal("key_1", "token") == answered
    assert cache.get_principal("key_1", "another token") is None


def test_nothing_is_cached_while_revocations_are_not_followed() -> None:
    cache = PrincipalCache(ttl=3600)
    verified = auth_pb2.Principal(account_id="acct_1", api_key_id="key_1")

    cache.put_verified("key_1", "token", verified, cache.ticket())
    cache.following = True
    cache.put_verified("key_1", "token", verified, cache.ticket())
    cached = cache.get_principal("key_1", "token")
    cache.stop_following()

    assert cached is not None
    assert cache.get_principal("key_1", "token") is None


async def test_rotating_the_webhook_secret_keeps_the_old_one_for_its_grace_period(
    client: httpx.AsyncClient,
) -> None:
    created = await sign_up_as(client)
    auth = bearer(created["api_key"]["token"])

    rotated = await client.post("/v1/account/webhook_secret/rotate", headers=auth)
    at_once = await client.post(
        "/v1/account/webhook_secret/rotate", json={"grace_period_seconds": 0}, headers=auth
    )
    too_long = await client.post(
        "/v1/account/webhook_secret/rotate", json={"grace_period_seconds": 10**6}, headers=auth
    )

    body = rotated.json()
    assert (rotated.status_code, body["object"]) == (200, "webhook_secret")
    assert body["secret"].startswith("whsec_")
    assert body["secret"] != created["webhook_secret"]
    expires = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    assert at_once.json()["previous_secret_expires_at"] is None
    assert error_of(too_long) == (400, "parameter_invalid")


async def test_a_test_key_cannot_rotate_the_webhook_secret(client: httpx.AsyncClient) -> None:
    token = (await sign_up_as(client))["api_key"]["token"]
    test = await new_key(client, token, mode="test")

    response = await client.post("/v1/account/webhook_secret/rotate", headers=bearer(test["token"]))

    assert error_of(response) == (403, "test_key_not_allowed")


def test_no_secret_appears_in_any_log_line_of_a_whole_flow(tmp_path: Path) -> None:
    """Signup, a second key, a rotated webhook secret, a job, a download by signed URL and by
    key, a revocation: then every secret is searched for in the mesh's debug logs."""
    data_dir = tmp_path / "data"
    log_file = tmp_path / "mesh.log"
    env = {
        **os.environ,
        "MP_DATA_DIR": str(data_dir),
        "MP_LOG_FORMAT": "json",
        "MP_LOG_LEVEL": "debug",
    }
    command = [sys.executable, "-m", "magicpixels.cli", "up", "--port", "0"]
    with (
        log_file.open("wb") as logs,
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=logs) as mesh,
    ):
        try:
            base_url = _announced_url(mesh)
            secrets = _run_flow(base_url, env)
        finally:
            mesh.terminate()
            mesh.wait(timeout=30)
    secrets += [
        load_or_create_secret(data_dir, name)
        for name in ("auth_pepper", "service_token", "assets_url_signing_key")
    ]
    text = log_file.read_text()

    assert '"event": "http"' in text  # the flow was logged
    assert '"event": "rpc"' in text
    leaked = [secret for secret in secrets if secret in text]
    assert leaked == []


def _announced_url(mesh: subprocess.Popen[bytes]) -> str:
    assert mesh.stdout is not None
    line = mesh.stdout.readline().decode()
    assert line.startswith("MagicPixels mesh on "), line
    return line.split()[3]


def _run_flow(base_url: str, env: dict[str, str]) -> list[str]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        created = client.post("/v1/accounts", json={"email": "ada@example.com"}).json()
        token = created["api_key"]["token"]
        auth = bearer(token)
        grant = ["admin", "grant-credits", created["account"]["id"], "5"]
        subprocess.run([sys.executable, "-m", "magicpixels.cli", *grant], env=env, check=True)
        second = client.post("/v1/api_keys", json={"name": "ci", "mode": "live"}, headers=auth)
        rotated = client.post("/v1/account/webhook_secret/rotate", headers=auth).json()
        body = {**API_EXAMPLE, "width": 64, "height": 64}
        job = client.post("/v1/jobs", json=body, headers={**auth, "Prefer": "wait=60"}).json()
        assert job["status"] == "completed", job
        url = job["result"]["url"]
        assert client.get(url).status_code == 200
        content = f"/v1/assets/{job['result']['asset_id']}/content"
        assert client.get(content, headers=auth).status_code == 200
        client.delete(f"/v1/api_keys/{second.json()['id']}", headers=auth)
        assert client.get("/v1/api_keys", headers=bearer(second.json()["token"])).status_code == 401
    tokens = [token, second.json()["token"]]
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    return [
        *tokens,
        *(domain.parse_token(t).secret for t in tokens),
        created["webhook_secret"],
        rotated["secret"],
        signature,
    ]


async def test_a_signup_and_a_key_repeated_with_their_idempotency_keys_are_replayed(
    client: httpx.AsyncClient,
) -> None:
    body = {"email": "retry@example.com", "name": "Retry"}
    once = {"Idempotency-Key": "signup-7f3a"}
    signup = await client.post("/v1/accounts", json=body, headers=once)
    signup_again = await client.post("/v1/accounts", json=body, headers=once)
    signup_renamed = await client.post("/v1/accounts", json={**body, "name": "R"}, headers=once)
    token = signup.json()["api_key"]["token"]
    key_headers = {**bearer(token), "Idempotency-Key": "key-9c1e"}
    key_body = {"name": "deploy", "mode": "test"}
    key = await client.post("/v1/api_keys", json=key_body, headers=key_headers)
    key_again = await client.post("/v1/api_keys", json=key_body, headers=key_headers)
    key_renamed = await client.post(
        "/v1/api_keys", json={**key_body, "name": "d"}, headers=key_headers
    )
    listed = await client.get("/v1/api_keys", headers=bearer(token))

    assert (signup.status_code, signup_again.status_code) == (201, 201)
    assert signup_again.json() == signup.json()
    assert "idempotent-replayed" not in signup.headers
    assert signup_again.headers["idempotent-replayed"] == "true"
    assert error_of(signup_renamed) == (409, "idempotency_key_reused")
    assert (key.status_code, key_again.status_code) == (201, 201)
    assert key_again.json() == key.json()
    assert key_again.headers["idempotent-replayed"] == "true"
    assert error_of(key_renamed) == (409, "idempotency_key_reused")
    assert len(listed.json()["data"]) == 2  # the first key and one "deploy"
