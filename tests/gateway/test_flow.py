"""The walking skeleton end to end: the whole mesh in this process, driven over real HTTP as a
client would, on SQLite and on PostgreSQL."""

import asyncio
import io
import random
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from magicpixels import cli
from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import API_EXAMPLE, sign_up
from tests.support import eventually


async def wait_until_done(client: httpx.AsyncClient, job_id: str, token: str) -> dict:
    for _ in range(300):
        response = await client.get(
            f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in ("completed", "failed", "canceled"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def settled_credits(client: httpx.AsyncClient, token: str) -> dict:
    """The account's credits once no hold is left: a finished job's hold settles just after."""
    credits: dict = {}

    async def settled() -> bool:
        response = await client.get("/v1/account", headers={"Authorization": f"Bearer {token}"})
        credits.update(response.json()["credits"])
        return credits["reserved"] == 0

    await eventually(settled)
    return credits


async def test_signup_grant_generate_download(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    account_id, token = await sign_up(client)
    data_dir = str(running_mesh.mesh.settings.data_dir)
    await asyncio.to_thread(
        cli.main, ["admin", "grant-credits", account_id, "5", "--data-dir", data_dir]
    )
    auth = {"Authorization": f"Bearer {token}"}

    created = await client.post("/v1/jobs", json=API_EXAMPLE, headers=auth)
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["object"], job["status"], job["cost_credits"]) == ("job", "queued", 1)
    assert job["params"]["width"] == job["params"]["height"] == 1024

    done = await wait_until_done(client, job["id"], token)
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["content_type"] == "image/png"

    signed = await client.get(result["url"])  # no key: the signature is the permission
    assert signed.status_code == 200
    assert signed.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(signed.content))
    assert (image.format, image.size) == ("PNG", (1024, 1024))

    owned = await client.get(f"/v1/assets/{result['asset_id']}/content", headers=auth)
    assert owned.content == signed.content

    assert await settled_credits(client, token) == {"available": 4, "reserved": 0}


async def test_a_job_the_account_cannot_pay_for_is_refused(client: httpx.AsyncClient) -> None:
    _, token = await sign_up(client)
    response = await client.post(
        "/v1/jobs", json=API_EXAMPLE, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"


async def test_bad_token_is_401_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/jobs", json=API_EXAMPLE, headers={"Authorization": "Bearer mp_live_nope.nope"}
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["request_id"] == response.headers["x-request-id"]


async def test_invalid_json_is_400_in_the_error_shape(client: httpx.AsyncClient) -> None:
    _, token = await sign_up(client)
    response = await client.post(
        "/v1/jobs",
        content=b'{"mode": "text_to_image", "prompt": ',
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Request-Id": "client-chosen-id",
        },
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_request_error",
            "code": "json_invalid",
            "message": "The body is not valid JSON.",
            "request_id": "client-chosen-id",
        }
    }
    assert response.headers["x-request-id"] == "client-chosen-id"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/jobs", b'{"mode": "text_to_image", "prompt": "\\ud800"}', "prompt"),
        ("/v1/jobs", b'{"mode": "text_to_image", "metadata": {"\\udc00": "x"}}', "metadata"),
        ("/v1/accounts", b'{"email": "s\\ud800@example.com"}', "email"),
        ("/v1/api_keys", b'{"name": "\\ud800", "mode": "test"}', "name"),
    ],
)
async def test_a_lone_surrogate_escape_is_400_naming_the_field(
    client: httpx.AsyncClient, path: str, body: bytes, param: str
) -> None:
    """Valid JSON, yet not text: refused as the field's fault, never a 500."""
    _, token = await sign_up(client)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("parameter_invalid", param)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"mode": "text_to_image"}', "text/plain", 415, "unsupported_media_type"),
        (b"mode=text_to_image", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"", None, 400, "parameter_missing"),
        (b'["text_to_image"]', "application/json", 400, "parameter_invalid"),
    ],
)
async def test_a_body_that_is_no_json_object_is_refused_as_a_whole(
    client: httpx.AsyncClient, body: bytes, content_type: str | None, status: int, code: str
) -> None:
    """A JSON body sent as another type (`curl -d` sends a form), none, or JSON that is no
    object: one error about the body, naming no field."""
    _, token = await sign_up(client)
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.post("/v1/jobs", content=body, headers=headers)
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (status, code)
    assert "param" not in error
    assert "JSON" in error["message"]


async def test_idempotency_key_replays_the_job_and_charges_once(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    account_id, token = await sign_up(client)
    data_dir = str(running_mesh.mesh.settings.data_dir)
    await asyncio.to_thread(
        cli.main, ["admin", "grant-credits", account_id, "5", "--data-dir", data_dir]
    )
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "order-42"}
    first = await client.post("/v1/jobs", json=API_EXAMPLE, headers=headers)
    again = await client.post("/v1/jobs", json=API_EXAMPLE, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    other_body = {**API_EXAMPLE, "prompt": "something else"}
    reused = await client.post("/v1/jobs", json=other_body, headers=headers)
    assert (reused.status_code, reused.json()["error"]["code"]) == (409, "idempotency_key_reused")
    await wait_until_done(client, first.json()["id"], token)
    assert await settled_credits(client, token) == {"available": 4, "reserved": 0}


async def test_a_json_body_over_the_limit_is_413_and_an_upload_is_not_held_to_it(
    client: httpx.AsyncClient,
) -> None:
    """Declared or streamed, a JSON body past 1 MiB is refused before it is read whole (it once
    went on to a service, whose gRPC limit made it a 500); an upload has a limit of its own."""
    _, token = await sign_up(client)
    auth = {"Authorization": f"Bearer {token}"}
    huge = {"email": "big@example.com", "name": "x" * (2 << 20)}

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        yield b'{"mode": "text_to_image", "prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    signup = await client.post("/v1/accounts", json=huge)
    chunked = await client.post(
        "/v1/jobs", content=streamed(), headers={**auth, "Content-Type": "application/json"}
    )
    noise = Image.frombytes("RGB", (900, 900), bytes(random.Random(7).randbytes(900 * 900 * 3)))
    png = io.BytesIO()
    noise.save(png, "PNG")
    upload = await client.post(
        "/v1/assets", content=png.getvalue(), headers={**auth, "Content-Type": "image/png"}
    )

    for refused in (signup, chunked):
        error = refused.json()["error"]
        assert (refused.status_code, error["code"]) == (413, "payload_too_large"), refused.text
        assert error["request_id"] == refused.headers["x-request-id"]
    assert len(png.getvalue()) > 2 << 20
    assert upload.status_code == 201, upload.text


async def test_json_that_cannot_be_decoded_is_json_invalid(client: httpx.AsyncClient) -> None:
    _, token = await sign_up(client)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latin1 = '{"mode": "text_to_image", "prompt": "é"}'.encode("latin-1")
    deep = b'{"mode": "text_to_image", "prompt": "p", "metadata": ' + b"[" * 100_000 + b"}"

    for body in (latin1, deep):
        response = await client.post("/v1/jobs", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "json_invalid"


async def test_refusals_carry_the_headers_http_asks_for(client: httpx.AsyncClient) -> None:
    """A 401 says which scheme to authenticate with (RFC 6750), a 405 which methods the
    route takes (RFC 9110), and a bad cursor is named as the client sent it."""
    _, token = await sign_up(client)
    no_key = await client.get("/v1/account")
    wrong_method = await client.delete("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    bad_cursor = await client.get(
        "/v1/jobs",
        params={"starting_after": "bogus_1"},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert no_key.status_code == 401
    assert no_key.headers["www-authenticate"] == 'Bearer realm="magicpixels"'
    assert wrong_method.status_code == 405
    assert set(wrong_method.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    error = bad_cursor.json()["error"]
    assert (bad_cursor.status_code, error["param"]) == (400, "starting_after")
    assert "page_token" not in error["message"]
