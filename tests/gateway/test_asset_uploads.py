"""POST /v1/assets over real HTTP: raw and multipart bodies streamed to the assets service, and
every bad input refused with its documented status and code, leaving nothing behind."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from magicpixels.mesh import RunningMesh
from tests.assets.samples import bad_inputs, encode_audio, encode_image
from tests.assets.stores import StoreUnderTest, store_under_test
from tests.gateway.conftest import sign_up
from tests.support import eventually

# The HTTP status and code of each reason the assets service refuses an upload with.
REFUSALS = {
    "UNSUPPORTED_MEDIA_TYPE": (415, "unsupported_media_type"),
    "CONTENT_MISMATCH": (415, "content_mismatch"),
    "PAYLOAD_TOO_LARGE": (413, "payload_too_large"),
}
BOUNDARY = "upload-boundary-7f3a"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture
async def auth(client: httpx.AsyncClient) -> dict[str, str]:
    _, token = await sign_up(client)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def blobs(running_mesh: RunningMesh) -> StoreUnderTest:
    """The mesh's local blob folder, drafts included."""
    return store_under_test("local", running_mesh.mesh.settings.data_dir / "blobs", "")


async def _assets(client: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, Any]]:
    response = await client.get("/v1/assets", headers=auth)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _error(response: httpx.Response) -> tuple[int, str, str, str | None]:
    error = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    return response.status_code, error["type"], error["code"], error.get("param")


async def _nothing_left(
    client: httpx.AsyncClient, auth: dict[str, str], blobs: StoreUnderTest
) -> None:
    """No blob, no draft and no asset, once a canceled upload has been cleaned up."""

    async def clean() -> bool:
        return blobs.leftovers() == []

    await eventually(clean)
    assert await _assets(client, auth) == []


def _part(name: str, data: bytes, content_type: str | None = "image/png") -> bytes:
    headers = f'Content-Disposition: form-data; name="{name}"; filename="upload"\r\n'
    if content_type:
        headers += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + b"\r\n"


def _form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("framing", ["raw", "multipart"])
async def test_every_bad_input_is_refused_with_its_status_and_leaves_nothing(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    blobs: StoreUnderTest,
    subtests: pytest.Subtests,
    framing: str,
) -> None:
    for bad in bad_inputs():
        with subtests.test(bad.name):
            if framing == "raw":
                headers = {**auth, "Content-Type": bad.content_type}
                response = await client.post("/v1/assets", content=bad.data, headers=headers)
            else:
                files = {"file": ("upload", bad.data, bad.content_type)}
                response = await client.post("/v1/assets", files=files, headers=auth)

            status, code = REFUSALS[bad.reason]
            assert _error(response) == (status, "invalid_request_error", code, None)
            assert blobs.leftovers() == []
    assert await _assets(client, auth) == []


@pytest.mark.parametrize(
    ("content_type", "body", "code", "param"),
    [
        pytest.param(FORM, _form(), "parameter_missing", "file", id="no file"),
        pytest.param(
            FORM,
            _form(_part("file", encode_image("PNG")), _part("file", encode_image("PNG"))),
            "parameter_invalid",
            "file",
            id="two files",
        ),
        pytest.param(
            FORM,
            _form(_part("file", encode_image("PNG")), _part("purpose", b"avatar", None)),
            "parameter_unknown",
            "purpose",
            id="an unknown field after the file",
        ),
        pytest.param(
            FORM,
            _form(_part("file", encode_image("PNG"), None)),
            "parameter_missing",
            "file",
            id="a file without a type",
        ),
        pytest.param(
            FORM,
            _part("file", encode_image("PNG")),
            "multipart_invalid",
            None,
            id="no closing boundary",
        ),
        pytest.param(
            FORM,
            f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
            "multipart_invalid",
            None,
            id="a part without a disposition",
        ),
        pytest.param(
            "multipart/form-data",
            _form(_part("file", encode_image("PNG"))),
            "multipart_invalid",
            None,
            id="no boundary parameter",
        ),
        pytest.param(
            FORM, b"x" * 100_000, "multipart_invalid", None, id="a boundary that never comes"
        ),
        pytest.param(None, encode_image("PNG"), "parameter_missing", "content_type", id="no type"),
    ],
)
async def test_a_malformed_body_is_400_and_leaves_nothing(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    blobs: StoreUnderTest,
    content_type: str | None,
    body: bytes,
    code: str,
    param: str | None,
) -> None:
    headers = {**auth, "Content-Type": content_type} if content_type else auth

    response = await client.post("/v1/assets", content=body, headers=headers)

    assert _error(response) == (400, "invalid_request_error", code, param)
    await _nothing_left(client, auth, blobs)


async def test_a_body_streamed_past_the_limit_without_a_length_is_413(
    client: httpx.AsyncClient, auth: dict[str, str], blobs: StoreUnderTest
) -> None:
    async def megabytes() -> AsyncIterator[bytes]:
        for _ in range(21):
            yield bytes(1024 * 1024)

    headers = {**auth, "Content-Type": "image/png"}
    response = await client.post("/v1/assets", content=megabytes(), headers=headers)

    assert "content-length" not in response.request.headers
    assert _error(response) == (413, "invalid_request_error", "payload_too_large", None)
    assert response.json()["error"]["message"] == "image files are limited to 20 MiB"
    await _nothing_left(client, auth, blobs)


@asynccontextmanager
async def _connection(
    client: httpx.AsyncClient,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to the gateway, to send bytes however they frame a request."""
    address = urlsplit(str(client.base_url))
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def _first_response(reader: asyncio.StreamReader) -> tuple[int, str]:
    """The status and error code of the response the gateway sends first."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = httpx.Response(status, content=await reader.readexactly(length)).json()
    return status, body["error"]["code"]


def _request_head(auth: dict[str, str], content_type: str, length: int) -> bytes:
    return (
        f"POST /v1/assets HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: {auth['Authorization']}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_bytes_past_a_short_content_length_never_join_the_file(
    client: httpx.AsyncClient, auth: dict[str, str], blobs: StoreUnderTest
) -> None:
    """The upload is the declared length: here a truncated PNG. The rest is another request,
    which is no HTTP, and ends the connection."""
    data = encode_image("PNG")
    half = len(data) // 2

    async with _connection(client) as (reader, writer):
        writer.write(_request_head(auth, "image/png", half) + data[:half])
        first = await _first_response(reader)
        writer.write(data[half:])
        rest = await reader.read()

    assert first == (415, "unsupported_media_type")
    assert rest.startswith(b"HTTP/1.1 400 ")
    await _nothing_left(client, auth, blobs)


async def test_a_client_gone_before_its_content_length_leaves_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], blobs: StoreUnderTest
) -> None:
    data = encode_image("PNG", (600, 400))

    async def staging() -> bool:
        return blobs.drafts() != []

    async with _connection(client) as (_, writer):
        writer.write(_request_head(auth, "image/png", len(data)) + data[: len(data) // 2])
        await writer.drain()
        await eventually(staging)

    await _nothing_left(client, auth, blobs)
    again = await client.post(
        "/v1/assets", content=data, headers={**auth, "Content-Type": "image/png"}
    )
    assert again.status_code == 201, again.text


async def test_uploads_need_a_key_with_assets_write(client: httpx.AsyncClient) -> None:
    _, token = await sign_up(client)
    created = await client.post(
        "/v1/api_keys",
        json={"name": "reader", "mode": "live", "scopes": ["assets:read"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    reader = {"Authorization": f"Bearer {created.json()['token']}", "Content-Type": "image/png"}

    refused = await client.post("/v1/assets", content=encode_image("PNG"), headers=reader)
    anonymous = await client.post(
        "/v1/assets", content=encode_image("PNG"), headers={"Content-Type": "image/png"}
    )

    assert _error(refused)[:3] == (403, "permission_error", "scope_missing")
    assert _error(anonymous)[:3] == (401, "authentication_error", "api_key_missing")


async def test_concurrent_uploads_of_two_files_make_an_asset_each_and_two_blobs(
    client: httpx.AsyncClient, auth: dict[str, str], blobs: StoreUnderTest
) -> None:
    image, audio = encode_image("WEBP"), encode_audio("audio/ogg")

    def upload(index: int) -> Any:
        data, content_type = (image, "image/webp") if index % 2 else (audio, "audio/ogg")
        if index % 4 < 2:
            return client.post(
                "/v1/assets", files={"file": ("f", data, content_type)}, headers=auth
            )
        return client.post(
            "/v1/assets", content=data, headers={**auth, "Content-Type": content_type}
        )

    responses = await asyncio.gather(*(upload(index) for index in range(8)))

    assert [response.status_code for response in responses] == [201] * 8
    assets = [response.json() for response in responses]
    assert len({asset["id"] for asset in assets}) == 8
    assert {asset["sha256"] for asset in assets} == set(blobs.blobs())
    assert len(blobs.blobs()) == 2
    assert blobs.drafts() == []


async def test_an_upload_repeated_with_its_idempotency_key_answers_the_first_asset(
    client: httpx.AsyncClient, auth: dict[str, str], blobs: StoreUnderTest
) -> None:
    """Raw or multipart, the same bytes and type are the same upload; other bytes are a 409."""
    image = encode_image("PNG")
    keyed = {**auth, "Idempotency-Key": "upload-5d2c"}
    raw = {**keyed, "Content-Type": "image/png"}

    first = await client.post("/v1/assets", content=image, headers=raw)
    again = await client.post(
        "/v1/assets", files={"file": ("f", image, "image/png")}, headers=keyed
    )
    other = await client.post("/v1/assets", content=encode_image("PNG", (8, 8)), headers=raw)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert _error(other) == (409, "conflict_error", "idempotency_key_reused", None)
    assert await _assets(client, auth) == [first.json()]
    assert blobs.blobs() == [first.json()["sha256"]]
    assert blobs.drafts() == []
