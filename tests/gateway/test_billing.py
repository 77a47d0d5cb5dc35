"""Pricing, plans, the credit ledger and the subscription over HTTP, on the whole mesh."""

import asyncio
import re
from typing import Any

import httpx
import pytest

from magicpixels import cli
from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import API_EXAMPLE, sign_up
from tests.support import eventually

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def admin(running_mesh: RunningMesh, *args: str) -> None:
    """The operator's command, against the mesh's data folder."""
    data_dir = str(running_mesh.mesh.settings.data_dir)
    await asyncio.to_thread(cli.main, ["admin", *args, "--data-dir", data_dir])


async def signed_up(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    account_id, token = await sign_up(client)
    return account_id, {"Authorization": f"Bearer {token}"}


async def credits(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, int]:
    response = await client.get("/v1/account", headers=auth)
    assert response.status_code == 200, response.text
    found: dict[str, int] = response.json()["credits"]
    return found


async def test_pricing_is_the_public_price_table(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/pricing")

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["has_more"], body["next_cursor"]) == ("list", False, None)
    assert [
        (p["object"], p["id"], p["aliases"], p["credits"], p["unit"], p["unit_block"])
        for p in body["data"]
    ] == [
        ("price", "text_to_image", [], 1, "job", 1),
        ("price", "image_to_image", [], 1, "job", 1),
        ("price", "text_to_audio", ["audio"], 1, "second", 10),
        ("price", "image_to_video", [], 22, "second", 1),
    ]
    assert all(p["mode"] == p["id"] and p["description"] for p in body["data"])


async def test_prices_and_plans_follow_the_list_conventions(client: httpx.AsyncClient) -> None:
    first = (await client.get("/v1/pricing", params={"limit": 3})).json()
    rest = (await client.get("/v1/pricing", params={"starting_after": first["next_cursor"]})).json()
    plans = (await client.get("/v1/plans", params={"limit": 1})).json()
    refused = await client.get("/v1/plans", params={"limit": 0})

    assert [p["id"] for p in first["data"]] == ["text_to_image", "image_to_image", "text_to_audio"]
    assert (first["has_more"], first["next_cursor"]) == (True, "text_to_audio")
    assert ([p["id"] for p in rest["data"]], rest["has_more"]) == (["image_to_video"], False)
    assert len(plans["data"]) == 1
    assert plans["has_more"]
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "limit"


async def test_plans_are_public(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/plans")

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [
        {
            "object": "plan",
            "id": "free",
            "name": "Free",
            "credits_per_period": 0,
            "period_days": 30,
            "price_cents": 0,
            "currency": "USD",
        },
        {
            "object": "plan",
            "id": "starter",
            "name": "Starter",
            "credits_per_period": 500,
            "period_days": 30,
            "price_cents": 900,
            "currency": "USD",
        },
        {
            "object": "plan",
            "id": "pro",
            "name": "Pro",
            "credits_per_period": 2500,
            "period_days": 30,
            "price_cents": 3900,
            "currency": "USD",
        },
    ]


async def test_the_ledger_shows_grants_and_a_job_s_hold_and_capture_in_pages(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    account_id, auth = await signed_up(client)
    await admin(running_mesh, "grant-credits", account_id, "5")
    created = await client.post("/v1/jobs", json=API_EXAMPLE, headers=auth)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    async def captured() -> bool:
        return (await credits(client, auth)) == {"available": 4, "reserved": 0}

    await eventually(captured)
    first = await client.get("/v1/credits/ledger", params={"limit": 2}, headers=auth)
    cursor = first.json()["next_cursor"]
    second = await client.get(
        "/v1/credits/ledger", params={"limit": 2, "starting_after": cursor}, headers=auth
    )

    assert first.status_code == second.status_code == 200
    page = first.json()
    assert (page["object"], page["has_more"]) == ("list", True)
    assert cursor == page["data"][-1]["id"]
    capture, hold = page["data"]
    [grant] = second.json()["data"]
    assert (second.json()["has_more"], second.json()["next_cursor"]) == (False, None)
    assert [(e["type"], e["amount"], e["balance_after"], e["job_id"]) for e in (grant, hold)] == [
        ("grant", 5, 5, None),
        ("hold", -1, 4, job_id),
    ]
    assert (capture["type"], capture["amount"], capture["balance_after"]) == ("capture", 0, 4)
    assert capture["job_id"] == job_id
    assert set(capture) == {
        "object",
        "id",
        "type",
        "amount",
        "balance_after",
        "job_id",
        "description",
        "created_at",
    }
    assert capture["object"] == "ledger_entry"
    assert capture["id"].startswith("ledg_")
    assert RFC3339.match(capture["created_at"])
    assert hold["description"] == f"1 credits held for {job_id} (text_to_image)"


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten"])
async def test_a_limit_outside_1_to_100_is_refused(client: httpx.AsyncClient, limit: str) -> None:
    _, auth = await signed_up(client)

    response = await client.get("/v1/credits/ledger", params={"limit": limit}, headers=auth)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "parameter_invalid",
        "limit",
    )


async def test_the_ledger_needs_a_key_with_account_read(client: httpx.AsyncClient) -> None:
    _, auth = await signed_up(client)
    key = {"name": "jobs only", "mode": "live", "scopes": ["jobs:read"]}
    narrow = await client.post("/v1/api_keys", json=key, headers=auth)
    assert narrow.status_code == 201, narrow.text
    narrow_auth = {"Authorization": f"Bearer {narrow.json()['token']}"}

    anonymous = await client.get("/v1/credits/ledger")
    scoped = await client.get("/v1/credits/ledger", headers=narrow_auth)

    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "api_key_missing")
    assert (scoped.status_code, scoped.json()["error"]["code"]) == (403, "scope_missing")


async def test_test_mode_is_free_has_no_ledger_and_cannot_subscribe(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    account_id, auth = await signed_up(client)
    await admin(running_mesh, "grant-credits", account_id, "5")
    made = await client.post("/v1/api_keys", json={"name": "ci", "mode": "test"}, headers=auth)
    assert made.status_code == 201, made.text
    test_auth = {"Authorization": f"Bearer {made.json()['token']}"}
    job = (await client.post("/v1/jobs", json=API_EXAMPLE, headers=test_auth)).json()

    async def completed() -> bool:
        found = await client.get(f"/v1/jobs/{job['id']}", headers=test_auth)
        return bool(found.json()["status"] == "completed")

    await eventually(completed)
    ledger = await client.get("/v1/credits/ledger", headers=test_auth)
    subscribing = await client.post("/v1/subscription", json={"plan": "pro"}, headers=test_auth)
    canceling = await client.post("/v1/subscription/cancel", headers=test_auth)

    assert (ledger.status_code, ledger.json()["data"], ledger.json()["has_more"]) == (
        200,
        [],
        False,
    )
    for refused in (subscribing, canceling):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "test_key_not_allowed"
    assert (job["livemode"], job["cost_credits"]) == (False, 0)
    live = (await client.get("/v1/credits/ledger", headers=auth)).json()["data"]
    assert [entry["type"] for entry in live] == ["grant"]
    assert await credits(client, auth) == {"available": 5, "reserved": 0}


async def test_a_subscription_waits_for_the_operator_then_refills(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    account_id, auth = await signed_up(client)

    subscribed = await client.post("/v1/subscription", json={"plan": "starter"}, headers=auth)

    assert subscribed.status_code == 200, subscribed.text
    pending = subscribed.json()
    assert pending["id"].startswith("sub_")
    assert {k: pending[k] for k in ("object", "plan", "status", "current_period_end")} == {
        "object": "subscription",
        "plan": "starter",
        "status": "pending",
        "current_period_end": None,
    }
    assert (await client.get("/v1/subscription", headers=auth)).json() == pending
    assert await credits(client, auth) == {"available": 0, "reserved": 0}
    assert (await client.get("/v1/account", headers=auth)).json()["plan"] == "free"

    await admin(running_mesh, "approve-subscription", account_id)
    assert (await client.get("/v1/account", headers=auth)).json()["plan"] == "starter"

    active = (await client.get("/v1/subscription", headers=auth)).json()
    assert (active["id"], active["status"], active["cancel_at_period_end"]) == (
        pending["id"],
        "active",
        False,
    )
    assert RFC3339.match(active["current_period_start"])
    assert RFC3339.match(active["current_period_end"])
    assert await credits(client, auth) == {"available": 500, "reserved": 0}
    [refill] = (await client.get("/v1/credits/ledger", headers=auth)).json()["data"]
    assert (refill["type"], refill["amount"], refill["job_id"]) == (
        "subscription_refill",
        500,
        None,
    )


@pytest.fixture
def approving_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The development setting `magicpixels up` users set, read when the mesh starts."""
    monkeypatch.setenv("MP_BILLING_AUTO_APPROVE_SUBSCRIPTIONS", "true")


async def test_the_dev_setting_activates_at_once_and_cancel_ends_with_the_period(
    approving_at_once: None, client: httpx.AsyncClient
) -> None:
    _, auth = await signed_up(client)

    subscribed = await client.post("/v1/subscription", json={"plan": "pro"}, headers=auth)
    again = await client.post("/v1/subscription", json={"plan": "pro"}, headers=auth)
    canceled = await client.post("/v1/subscription/cancel", headers=auth)

    assert subscribed.json()["status"] == "active"
    assert again.json() == subscribed.json()
    assert await credits(client, auth) == {"available": 2500, "reserved": 0}
    ending: dict[str, Any] = canceled.json()
    assert (ending["status"], ending["cancel_at_period_end"], ending["ended_at"]) == (
        "active",
        True,
        None,
    )
    assert RFC3339.match(ending["canceled_at"])
    assert ending["current_period_end"] == subscribed.json()["current_period_end"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"plan": "gold"}, "plan_unknown", "plan"),
        ({}, "parameter_missing", "plan"),
        ({"plan": 5}, "parameter_invalid", "plan"),
        ({"plan": "pro", "coupon": "x"}, "parameter_unknown", "coupon"),
    ],
)
async def test_a_bad_subscription_request_is_refused(
    client: httpx.AsyncClient, body: dict[str, Any], code: str, param: str
) -> None:
    _, auth = await signed_up(client)

    response = await client.post("/v1/subscription", json=body, headers=auth)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["request_id"].startswith("req_")


async def test_an_account_that_never_subscribed_has_no_subscription(
    client: httpx.AsyncClient,
) -> None:
    _, auth = await signed_up(client)

    read = await client.get("/v1/subscription", headers=auth)
    canceled = await client.post("/v1/subscription/cancel", headers=auth)

    for response in (read, canceled):
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("not_found_error", "subscription_not_found")
