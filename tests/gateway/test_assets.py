"""GET /v1/assets/{id}/content over real HTTP: owner key or signed URL, ETag, ranges, HEAD."""

import io
from collections.abc import AsyncIterator
from typing import NamedTuple

import httpx
import pytest
from PIL import Image

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import sign_up


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


async def upload(running_mesh: RunningMesh, account_id: str, data: bytes) -> str:
    assets = assets_pb2_grpc.AssetsServiceStub(running_mesh.mesh.channel("assets"))

    async def requests() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        yield assets_pb2.UploadAssetRequest(
            header=assets_pb2.UploadHeader(
                account_id=account_id, livemode=True, content_type="image/png"
            )
        )
        yield assets_pb2.UploadAssetRequest(chunk=data)

    return (await assets.UploadAsset(requests())).id


class Owned(NamedTuple):
    path: str
    auth: dict[str, str]
    data: bytes


@pytest.fixture
async def owned(client: httpx.AsyncClient, running_mesh: RunningMesh) -> Owned:
    """A PNG asset of a new account: its content path, the owner's key header, its bytes."""
    account_id, token = await sign_up(client)
    data = png_bytes()
    asset_id = await upload(running_mesh, account_id, data)
    return Owned(f"/v1/assets/{asset_id}/content", {"Authorization": f"Bearer {token}"}, data)


async def test_owner_downloads_with_etag_and_revalidates(client: httpx.AsyncClient, owned) -> None:
    path, auth, data = owned
    whole = await client.get(path, headers=auth)
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["content-type"] == "image/png"
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["accept-ranges"] == "bytes"
    again = await client.get(path, headers={**auth, "If-None-Match": whole.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")


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
    response = await client.get(f"{path}?expires=4102444800&signature=AAAA")
    assert (response.status_code, response.json()["error"]["type"]) == (403, "permission_error")


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
