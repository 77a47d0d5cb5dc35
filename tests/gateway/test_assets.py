"""The asset routes over real HTTP, on the local blob store and an S3 bucket: upload, list, get,
delete, signed URLs, and the content to its owner's key or a signed URL, with ETag and ranges."""

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from magicpixels.core.settings import (
    AssetsSettings,
    GatewaySettings,
    MeshSettings,
    load_or_create_secret,
)
from magicpixels.core.timestamps import rfc3339
from magicpixels.mesh import RunningMesh, start_mesh
from magicpixels.services.assets import domain
from tests.assets.samples import encode_audio, encode_image
from tests.assets.stores import StoreUnderTest, choose_blob_store, on_every_store, serve_s3
from tests.gateway.conftest import sign_up
from tests.support import Database, mesh_databases

s3_endpoint = pytest.fixture(scope="session", name="s3_endpoint")(serve_s3)
blob_store = pytest.fixture(name="blob_store")(choose_blob_store)


@pytest.fixture
async def running_mesh(
    database: Database, tmp_path: Any, blob_store: StoreUnderTest
) -> AsyncIterator[RunningMesh]:
    """The whole mesh, as the gateway tests' conftest starts it, on this test's blob store."""
    data_dir = tmp_path / "mesh"
    services = mesh_databases(database, data_dir)
    services["assets"] = AssetsSettings(**services["assets"].model_dump() | blob_store.settings())
    running = await start_mesh(
        MeshSettings(data_dir=data_dir), GatewaySettings(port=0), service_settings=services
    )
    yield running
    await running.stop()


def png_bytes() -> bytes:
    return encode_image("PNG", (64, 48))


async def upload(client: httpx.AsyncClient, auth: dict[str, str], data: bytes) -> dict[str, Any]:
    headers = {**auth, "Content-Type": "image/png"}
    response = await client.post("/v1/assets", content=data, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


class Owned(NamedTuple):
    path: str
    auth: dict[str, str]
    data: bytes


@pytest.fixture
async def auth(client: httpx.AsyncClient) -> dict[str, str]:
    _, token = await sign_up(client)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def owned(client: httpx.AsyncClient, auth: dict[str, str]) -> Owned:
    """A PNG asset of a new account: its content path, the owner's key header, its bytes."""
    data = png_bytes()
    asset = await upload(client, auth, data)
    return Owned(f"/v1/assets/{asset['id']}/content", auth, data)


def _error(response: httpx.Response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error.get("param")


def _expires(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["expires"][0])


@on_every_store
async def test_an_upload_round_trips_and_its_blob_goes_with_its_last_asset(
    client: httpx.AsyncClient, auth: dict[str, str], blob_store: StoreUnderTest
) -> None:
    data = encode_image("PNG", (300, 200))
    sha256 = hashlib.sha256(data).hexdigest()

    first = await upload(client, auth, data)
    form = await client.post(
        "/v1/assets", files={"file": ("photo.png", data, "image/png")}, headers=auth
    )
    second = form.json()

    assert first == {
        "object": "asset",
        "id": first["id"],
        "kind": "image",
        "content_type": "image/png",
        "size_bytes": len(data),
        "sha256": sha256,
        "width": 300,
        "height": 200,
        "origin": "upload",
        "livemode": True,
        "created_at": first["created_at"],
    }
    assert form.status_code == 201
    assert second == {**first, "id": second["id"], "created_at": second["created_at"]}
    assert blob_store.blobs() == [sha256]

    listed = (await client.get("/v1/assets", headers=auth)).json()
    page = (await client.get("/v1/assets", params={"limit": 1}, headers=auth)).json()
    rest = await client.get(
        "/v1/assets", params={"limit": 1, "starting_after": second["id"]}, headers=auth
    )
    assert listed == {
        "object": "list",
        "data": [second, first],
        "has_more": False,
        "next_cursor": None,
    }
    assert (page["data"], page["has_more"], page["next_cursor"]) == ([second], True, second["id"])
    assert (rest.json()["data"], rest.json()["has_more"]) == ([first], False)
    assert (await client.get(f"/v1/assets/{first['id']}", headers=auth)).json() == first

    content = f"/v1/assets/{first['id']}/content"
    part = await client.get(content, headers={**auth, "Range": "bytes=100-1099"})
    whole = await client.get(content, headers=auth)
    revalidated = await client.get(content, headers={**auth, "If-None-Match": f'"{sha256}"'})
    assert (part.status_code, part.content) == (206, data[100:1100])
    assert (whole.status_code, whole.content, whole.headers["etag"]) == (200, data, f'"{sha256}"')
    assert revalidated.status_code == 304

    signed = await client.post(
        f"/v1/assets/{first['id']}/url", json={"expires_in": 600}, headers=auth
    )
    url = signed.json()["url"]
    fetched = await client.get(url)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert signed.json()["expires_at"] == rfc3339(datetime.fromtimestamp(_expires(url), UTC))

    deleted = await client.delete(f"/v1/assets/{first['id']}", headers=auth)
    assert deleted.json() == {"object": "asset", "id": first["id"], "deleted": True}
    assert blob_store.blobs() == [sha256]
    assert _error(await client.get(url)) == (404, "asset_not_found", None)
    assert _error(await client.get(content, headers=auth)) == (404, "asset_not_found", None)
    assert (await client.get(f"/v1/assets/{second['id']}/content", headers=auth)).content == data

    await client.delete(f"/v1/assets/{second['id']}", headers=auth)
    assert blob_store.leftovers() == []
    assert (await client.get("/v1/assets", headers=auth)).json()["data"] == []


async def test_audio_is_uploaded_with_its_length_and_served_as_audio(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    data = encode_audio("audio/flac", seconds=2.5)

    created = await client.post(
        "/v1/assets", files={"file": ("take.flac", data, "audio/flac")}, headers=auth
    )
    asset = created.json()
    served = await client.get(f"/v1/assets/{asset['id']}/content", headers=auth)

    assert created.status_code == 201
    assert (asset["kind"], asset["content_type"], asset["duration_seconds"]) == (
        "audio",
        "audio/flac",
        2.5,
    )
    assert asset.keys().isdisjoint({"width", "height", "job_id"})
    assert (served.headers["content-type"], served.content) == ("audio/flac", data)


@pytest.mark.parametrize("limit", [0, 101, "ten"])
async def test_a_list_limit_outside_1_to_100_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], limit: Any
) -> None:
    response = await client.get("/v1/assets", params={"limit": limit}, headers=auth)

    assert _error(response) == (400, "parameter_invalid", "limit")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"expires_in": 59}, "parameter_invalid", "expires_in"),
        ({"expires_in": 86_401}, "parameter_invalid", "expires_in"),
        ({"expires_in": "600"}, "parameter_invalid", "expires_in"),
        ({"expires_in": 600, "scope": "all"}, "parameter_unknown", "scope"),
    ],
)
async def test_a_bad_url_request_is_refused(
    client: httpx.AsyncClient, owned: Owned, body: dict[str, Any], code: str, param: str
) -> None:
    asset_id = owned.path.split("/")[3]

    response = await client.post(f"/v1/assets/{asset_id}/url", json=body, headers=owned.auth)

    assert _error(response) == (400, code, param)


async def test_a_url_lasts_an_hour_by_default_and_an_expired_one_is_410(
    client: httpx.AsyncClient, owned: Owned, running_mesh: RunningMesh
) -> None:
    asset_id = owned.path.split("/")[3]
    key = load_or_create_secret(running_mesh.mesh.settings.data_dir, "assets_url_signing_key")
    now = int(datetime.now(UTC).timestamp())

    signed = await client.post(f"/v1/assets/{asset_id}/url", headers=owned.auth)
    expired = domain.signed_query(key.encode(), asset_id, now - 1)
    response = await client.get(f"{owned.path}?{expired}")

    assert now + 3600 <= _expires(signed.json()["url"]) <= now + 3660
    assert (response.status_code, response.json()["error"]["type"]) == (410, "permission_error")
    assert response.json()["error"]["code"] == "url_expired"


async def test_another_account_sees_none_of_the_routes(
    client: httpx.AsyncClient, owned: Owned
) -> None:
    asset_id = owned.path.split("/")[3]
    signed_up = await client.post("/v1/accounts", json={"email": "eve@example.com"})
    other = {"Authorization": f"Bearer {signed_up.json()['api_key']['token']}"}

    responses = [
        await client.get(f"/v1/assets/{asset_id}", headers=other),
        await client.delete(f"/v1/assets/{asset_id}", headers=other),
        await client.post(f"/v1/assets/{asset_id}/url", headers=other),
    ]

    assert [_error(response) for response in responses] == [(404, "asset_not_found", None)] * 3
    assert (await client.get("/v1/assets", headers=other)).json()["data"] == []
    assert (await client.get(owned.path, headers=owned.auth)).status_code == 200


async def test_a_test_mode_key_sees_only_test_mode_assets(
    client: httpx.AsyncClient, owned: Owned
) -> None:
    created = await client.post(
        "/v1/api_keys", json={"name": "ci", "mode": "test"}, headers=owned.auth
    )
    test_key = {"Authorization": f"Bearer {created.json()['token']}"}

    test_asset = await upload(client, test_key, encode_image("PNG", (10, 10)))
    seen_by_test = (await client.get("/v1/assets", headers=test_key)).json()["data"]
    seen_by_live = (await client.get("/v1/assets", headers=owned.auth)).json()["data"]

    assert test_asset["livemode"] is False
    assert [asset["id"] for asset in seen_by_test] == [test_asset["id"]]
    assert test_asset["id"] not in [asset["id"] for asset in seen_by_live]
    for key, asset_id in ((test_key, owned.path.split("/")[3]), (owned.auth, test_asset["id"])):
        responses = [
            await client.get(f"/v1/assets/{asset_id}", headers=key),
            await client.get(f"/v1/assets/{asset_id}/content", headers=key),
            await client.post(f"/v1/assets/{asset_id}/url", headers=key),
            await client.delete(f"/v1/assets/{asset_id}", headers=key),
        ]
        assert [_error(response) for response in responses] == [(404, "asset_not_found", None)] * 4


async def test_a_read_only_key_lists_and_signs_but_cannot_delete(
    client: httpx.AsyncClient, owned: Owned
) -> None:
    asset_id = owned.path.split("/")[3]
    created = await client.post(
        "/v1/api_keys",
        json={"name": "reader", "mode": "live", "scopes": ["assets:read"]},
        headers=owned.auth,
    )
    reader = {"Authorization": f"Bearer {created.json()['token']}"}

    assert (await client.get("/v1/assets", headers=reader)).status_code == 200
    assert (await client.post(f"/v1/assets/{asset_id}/url", headers=reader)).status_code == 200
    assert _error(await client.delete(f"/v1/assets/{asset_id}", headers=reader)) == (
        403,
        "scope_missing",
        None,
    )


async def test_owner_downloads_with_etag_and_revalidates(client: httpx.AsyncClient, owned) -> None:
    path, auth, data = owned
    whole = await client.get(path, headers=auth)
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["content-type"] == "image/png"
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["accept-ranges"] == "bytes"
    etag = whole.headers["etag"]
    assert whole.headers["cache-control"] == "private, no-cache"  # asked again, at once
    for asked in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get(path, headers={**auth, "If-None-Match": asked})
        assert (again.status_code, again.content) == (304, b""), asked
    changed = await client.get(path, headers={**auth, "If-None-Match": '"other"'})
    assert changed.status_code == 200
    # If-Range: the range of this version only; of another, the whole content.
    ranged = await client.get(path, headers={**auth, "Range": "bytes=0-9", "If-Range": etag})
    stale = await client.get(path, headers={**auth, "Range": "bytes=0-9", "If-Range": '"old"'})
    assert (ranged.status_code, ranged.content) == (206, data[:10])
    assert (stale.status_code, stale.content) == (200, data)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 10), ("bytes=10-", 10, None), ("bytes=-5", -5, None)],
)
async def test_a_single_range_gets_206(
    client: httpx.AsyncClient,
    owned,
    header: str,
    start: int,
    end: int | None,
) -> None:
    path, auth, data = owned
    response = await client.get(path, headers={**auth, "Range": header})
    expected = data[start:end]
    assert response.status_code == 206
    assert response.content == expected
    first = start % len(data)
    assert (
        response.headers["content-range"]
        == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    )


async def test_a_range_past_the_end_is_416_in_the_error_shape(
    client: httpx.AsyncClient, owned
) -> None:
    path, auth, data = owned
    response = await client.get(path, headers={**auth, "Range": f"bytes={len(data)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


async def test_head_gives_the_headers_without_the_body(client: httpx.AsyncClient, owned) -> None:
    path, auth, data = owned
    response = await client.head(path, headers=auth)
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-length"] == str(len(data))


async def test_another_account_and_no_key_cannot_read(client: httpx.AsyncClient, owned) -> None:
    path, _, _ = owned
    response = await client.post("/v1/accounts", json={"email": "eve@example.com"})
    other = {"Authorization": f"Bearer {response.json()['api_key']['token']}"}
    assert (await client.get(path, headers=other)).json()["error"]["code"] == "asset_not_found"
    anonymous = await client.get(path)
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "api_key_missing")


async def test_a_tampered_signed_url_is_403(client: httpx.AsyncClient, owned) -> None:
    path, _, _ = owned
    for query in ("expires=4102444800&signature=AAAA", "expires=4102444800", "signature=AAAA"):
        response = await client.get(f"{path}?{query}")
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (403, "url_signature_invalid"), query


async def test_an_inverted_range_is_ignored_as_rfc_9110_says(
    client: httpx.AsyncClient, owned
) -> None:
    """`bytes=5-2` is not a valid range (its last byte before its first): the whole content."""
    path, auth, data = owned
    response = await client.get(path, headers={**auth, "Range": "bytes=5-2"})
    assert (response.status_code, response.content) == (200, data)
    # Nor is a position of 5,000 digits, which Python will not read as a number (it was a 500).
    huge = await client.get(path, headers={**auth, "Range": f"bytes={'9' * 5000}-"})
    assert (huge.status_code, huge.content) == (200, data)


async def test_json_says_its_charset_and_unknown_routes_use_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json()["error"]["code"] == "route_not_found"
    wrong_method = await client.delete("/v1/accounts")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (
        405,
        "method_not_allowed",
    )
