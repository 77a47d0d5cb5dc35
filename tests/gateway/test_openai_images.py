"""The OpenAI Images routes driven by the official `openai` package, pointed at the gateway."""

import asyncio
import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from magicpixels import cli
from magicpixels.mesh import RunningMesh
from tests.assets.samples import encode_image
from tests.gateway.conftest import sign_up
from tests.gateway.test_jobs import funded
from tests.support import eventually


async def _openai(client: httpx.AsyncClient, running_mesh: RunningMesh) -> openai.AsyncOpenAI:
    auth = await funded(client, running_mesh)
    token = auth["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(api_key=token, base_url=f"{client.base_url}/v1", max_retries=0)


async def test_generations_answer_urls_and_base64_as_ordinary_jobs(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    async with await _openai(client, running_mesh) as ai:
        by_url = await ai.images.generate(prompt="a teapot", n=2, size="64x64")  # type: ignore[arg-type]
        inline = await ai.images.generate(
            prompt="a teapot",
            size="128x64",  # type: ignore[arg-type]
            response_format="b64_json",
        )
        jobs = await ai.get("/jobs", cast_to=object)
    assert by_url.data is not None
    assert len(by_url.data) == 2
    for image in by_url.data:
        assert image.url is not None
        fetched = await client.get(image.url)  # a signed URL: no key needed
        assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    assert inline.data is not None
    decoded = base64.b64decode(inline.data[0].b64_json or "")
    assert Image.open(io.BytesIO(decoded)).size == (128, 64)
    listed = jobs["data"]  # type: ignore[index]
    assert [job["mode"] for job in listed] == ["text_to_image"] * 3
    assert all(job["status"] == "completed" for job in listed)


async def test_edits_restyle_the_uploaded_image(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    async with await _openai(client, running_mesh) as ai:
        edited = await ai.images.edit(
            image=("photo.png", encode_image("PNG", (96, 64)), "image/png"),
            prompt="as a watercolour",
            response_format="b64_json",
        )
        from_bytes = await ai.images.edit(image=encode_image("PNG", (64, 64)), prompt="in ink")
    assert edited.data is not None
    picture = Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json or "")))
    assert picture.size == (96, 64)
    assert from_bytes.data is not None
    assert from_bytes.data[0].url is not None


async def test_errors_take_the_openai_shape(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    async with await _openai(client, running_mesh) as ai:
        with pytest.raises(openai.BadRequestError) as bad_size:
            await ai.images.generate(prompt="x", size="huge")  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as too_many:
            await ai.images.generate(prompt="x", n=11)
        with pytest.raises(openai.BadRequestError) as refused_size:
            await ai.images.generate(prompt="x", size="100x100")  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as masked:
            await ai.images.edit(
                image=("a.png", encode_image("PNG", (64, 64)), "image/png"),
                mask=("m.png", encode_image("PNG", (64, 64)), "image/png"),
                prompt="x",
            )
    assert bad_size.value.code == "parameter_invalid"
    assert bad_size.value.param == "size"
    assert (too_many.value.param, masked.value.code) == ("n", "parameter_unsupported")
    # The jobs service refused the width the size made: the client is told of its size.
    assert (refused_size.value.code, refused_size.value.param) == ("parameter_invalid", "size")
    async with openai.AsyncOpenAI(
        api_key="mp_live_wrong", base_url=f"{client.base_url}/v1", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError) as refused:
            await stranger.images.generate(prompt="x")
    body = refused.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code", "request_id"}
    assert (body["type"], body["param"]) == ("authentication_error", None)


@pytest.mark.without_workers
async def test_images_the_credits_cover_in_part_are_refused_whole_and_charge_nothing(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """Two credits, three images: the one answer is 402, and the two jobs created before the
    third was refused are canceled and their holds released (no worker runs, so none can
    complete first)."""
    account_id, token = await sign_up(client)
    grant = ["admin", "grant-credits", account_id, "2"]
    await asyncio.to_thread(
        cli.main, [*grant, "--data-dir", str(running_mesh.mesh.settings.data_dir)]
    )
    auth = {"Authorization": f"Bearer {token}"}
    async with openai.AsyncOpenAI(
        api_key=token, base_url=f"{client.base_url}/v1", max_retries=0
    ) as ai:
        with pytest.raises(openai.APIStatusError) as refused:
            await ai.images.generate(prompt="a teapot", n=3, size="64x64")  # type: ignore[arg-type]

    assert (refused.value.status_code, refused.value.code) == (402, "insufficient_credits")
    jobs = (await client.get("/v1/jobs", headers=auth)).json()["data"]
    assert [job["status"] for job in jobs] == ["canceled", "canceled"]

    async def released() -> bool:  # a cancel's release follows its move
        account = (await client.get("/v1/account", headers=auth)).json()
        return bool(account["credits"] == {"available": 2, "reserved": 0})

    await eventually(released)
    ledger = (await client.get("/v1/credits/ledger", headers=auth)).json()["data"]
    assert sorted(entry["type"] for entry in ledger) == [
        "grant",
        "hold",
        "hold",
        "release",
        "release",
    ]


async def test_an_edit_retried_with_its_idempotency_key_makes_one_asset_and_one_job(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """The retry uploads the image again: its key (`<key>#image`) answers the first asset, so
    the job's spec is the same and its key (`<key>#0`) answers the first job."""
    account_id, token = await sign_up(client)
    grant = ["admin", "grant-credits", account_id, "5"]
    await asyncio.to_thread(
        cli.main, [*grant, "--data-dir", str(running_mesh.mesh.settings.data_dir)]
    )
    auth = {"Authorization": f"Bearer {token}"}
    form = {"prompt": "as a watercolour", "size": "64x64", "response_format": "b64_json"}
    image = {"image": ("photo.png", encode_image("PNG", (64, 64)), "image/png")}

    answers = [
        await client.post(
            "/v1/images/edits",
            data=form,
            files=image,
            headers={**auth, "Idempotency-Key": "edit-1"},
            timeout=120,
        )
        for _ in range(2)
    ]

    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    assert answers[1].json()["data"] == answers[0].json()["data"]
    jobs = (await client.get("/v1/jobs", headers=auth)).json()["data"]
    uploads = (await client.get("/v1/assets", headers=auth)).json()["data"]
    assert len(jobs) == 1
    assert [asset["origin"] for asset in uploads].count("upload") == 1
