"""The OpenAI Images routes driven by the official `openai` package, pointed at the gateway."""

import asyncio
import base64
import contextlib
import io

import httpx
import openai
import pytest
from PIL import Image

from magicpixels import cli
from magicpixels.gateway import openai_images
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.mesh import RunningMesh
from tests.assets.samples import encode_image
from tests.gateway.conftest import sign_up
from tests.gateway.test_auth import error_of
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


async def _account_with(
    client: httpx.AsyncClient, running_mesh: RunningMesh, credits: int
) -> tuple[str, dict[str, str]]:
    """A new account granted `credits`: its id and its key's Authorization header."""
    account_id, token = await sign_up(client)
    await _grant(account_id, running_mesh, credits)
    return account_id, {"Authorization": f"Bearer {token}"}


async def _grant(account_id: str, running_mesh: RunningMesh, credits: int) -> None:
    grant = ["admin", "grant-credits", account_id, str(credits)]
    await asyncio.to_thread(
        cli.main, [*grant, "--data-dir", str(running_mesh.mesh.settings.data_dir)]
    )


async def _credits(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, int]:
    account = (await client.get("/v1/account", headers=auth)).json()
    return dict(account["credits"])


async def _jobs(client: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, object]]:
    return list((await client.get("/v1/jobs", headers=auth)).json()["data"])


IMAGES = {"prompt": "a teapot", "size": "64x64"}


async def test_images_the_credits_cover_in_part_are_refused_before_any_job_is_made(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """Two credits, three images: one 402 for the request as a whole, and nothing created,
    held or written to the ledger."""
    _, auth = await _account_with(client, running_mesh, 2)
    token = auth["Authorization"].removeprefix("Bearer ")
    async with openai.AsyncOpenAI(
        api_key=token, base_url=f"{client.base_url}/v1", max_retries=0
    ) as ai:
        with pytest.raises(openai.APIStatusError) as refused:
            await ai.images.generate(prompt="a teapot", n=3, size="64x64")  # type: ignore[arg-type]

    assert (refused.value.status_code, refused.value.code) == (402, "insufficient_credits")
    assert refused.value.message.endswith("3 images need 3 credits, 2 available")
    assert await _jobs(client, auth) == []
    assert await _credits(client, auth) == {"available": 2, "reserved": 0}
    ledger = (await client.get("/v1/credits/ledger", headers=auth)).json()["data"]
    assert [entry["type"] for entry in ledger] == ["grant"]


@pytest.mark.without_workers
async def test_a_keyed_request_refused_in_part_frees_its_key_for_a_retry(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """With a key the jobs are asked for (the request may replay jobs paid for already): the
    images made before the refusal are canceled, their holds released and their keys freed,
    so the same request after a top-up makes its jobs anew rather than replaying canceled
    ones (no worker runs: the jobs stay queued, and the retry's client stops waiting)."""
    account_id, auth = await _account_with(client, running_mesh, 2)
    keyed = {**auth, "Idempotency-Key": "three-teapots"}
    body = {**IMAGES, "n": 3}

    refused = await client.post("/v1/images/generations", json=body, headers=keyed)

    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["message"] == "3 images need 3 credits, 2 available"
    assert [job["status"] for job in await _jobs(client, auth)] == ["canceled", "canceled"]

    async def released() -> bool:  # a cancel's release follows its move
        return await _credits(client, auth) == {"available": 2, "reserved": 0}

    await eventually(released)
    await _grant(account_id, running_mesh, 1)
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/images/generations", json=body, headers=keyed, timeout=1)

    statuses = [job["status"] for job in await _jobs(client, auth)]
    assert sorted(statuses) == ["canceled"] * 2 + ["queued"] * 3
    # The client left, but its key lets a retry wait for these jobs: they go on.
    assert await _credits(client, auth) == {"available": 0, "reserved": 3}


@pytest.mark.without_workers
async def test_the_jobs_of_a_request_without_a_key_are_canceled_when_its_client_leaves(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """Nobody can get the images of a request without a key once its client is gone (an
    OpenAI SDK timing out, say, before retrying), so nobody pays for them."""
    _, auth = await _account_with(client, running_mesh, 5)

    with pytest.raises(httpx.ReadTimeout):
        await client.post(
            "/v1/images/generations", json={**IMAGES, "n": 2}, headers=auth, timeout=1
        )

    async def canceled() -> bool:
        statuses = [job["status"] for job in await _jobs(client, auth)]
        return statuses == ["canceled", "canceled"]

    async def released() -> bool:
        return await _credits(client, auth) == {"available": 5, "reserved": 0}

    await eventually(canceled)
    await eventually(released)


async def test_a_repeated_key_replays_the_request_and_refuses_another(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """The same body replays the same images, flagged; the same key with another `n` (each
    image's own spec unchanged) or another response format is 409, and charges nothing."""
    _, auth = await _account_with(client, running_mesh, 5)
    keyed = {**auth, "Idempotency-Key": "teapot-1"}

    first, again = [
        await client.post("/v1/images/generations", json=IMAGES, headers=keyed, timeout=120)
        for _ in range(2)
    ]
    other_n = await client.post(
        "/v1/images/generations", json={**IMAGES, "n": 2}, headers=keyed, timeout=120
    )
    other_format = await client.post(
        "/v1/images/generations",
        json={**IMAGES, "response_format": "b64_json"},
        headers=keyed,
        timeout=120,
    )

    assert (first.status_code, again.status_code) == (200, 200), first.text
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["data"] == first.json()["data"]
    for refused in (other_n, other_format):
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "idempotency_key_reused"

    async def one_charged() -> bool:  # the second image of other_n was made, then undone
        return await _credits(client, auth) == {"available": 4, "reserved": 0}

    await eventually(one_charged)


async def test_gpt_image_calls_get_base64_and_their_extra_fields_are_understood(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """Code written for gpt-image-1 decodes `b64_json` without asking for it, and sends fields
    DALL-E did not have: those that change nothing here are accepted, the others refused by
    name."""
    async with await _openai(client, running_mesh) as ai:
        answer = await ai.images.generate(
            model="gpt-image-1",
            prompt="a teapot",
            size="64x64",  # type: ignore[arg-type]
            background="opaque",
            output_compression=80,
            quality="low",
        )
        with pytest.raises(openai.BadRequestError) as transparent:
            await ai.images.generate(prompt="x", background="transparent")
        with pytest.raises(openai.BadRequestError) as streamed:
            await ai.images.generate(prompt="x", stream=True)

    assert answer.data is not None
    decoded = base64.b64decode(answer.data[0].b64_json or "")
    assert Image.open(io.BytesIO(decoded)).size == (64, 64)
    assert (transparent.value.code, transparent.value.param) == (
        "parameter_unsupported",
        "background",
    )
    assert (streamed.value.code, streamed.value.param) == ("parameter_unsupported", "stream")


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


@pytest.mark.without_workers
async def test_past_the_limit_unkeyed_jobs_are_canceled_and_keyed_ones_go_on(
    client: httpx.AsyncClient, running_mesh: RunningMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry of the unkeyed request would queue new jobs to wait as long (so the OpenAI SDK
    is told not to); a keyed one's retry waits for the same jobs (no worker runs here)."""
    monkeypatch.setattr(openai_images, "FINISH_SECONDS", 1)
    _, auth = await _account_with(client, running_mesh, 5)

    unkeyed = await client.post("/v1/images/generations", json=IMAGES, headers=auth)
    keyed = await client.post(
        "/v1/images/generations", json=IMAGES, headers={**auth, "Idempotency-Key": "slow"}
    )

    assert [error_of(answer) for answer in (unkeyed, keyed)] == [(503, "service_unavailable")] * 2
    assert unkeyed.headers["x-should-retry"] == "false"
    assert "x-should-retry" not in keyed.headers
    assert keyed.headers["retry-after"] == "1"
    statuses = [job["status"] for job in await _jobs(client, auth)]
    assert statuses == ["queued", "canceled"]  # newest first


@pytest.mark.without_workers
async def test_a_request_cut_by_a_stopping_gateway_charges_nothing_for_its_unkeyed_jobs(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """A stopping gateway lets image requests run through its grace, then cancels them: their
    jobs, which nobody can fetch now, are canceled with them."""
    account_id, auth = await _account_with(client, running_mesh, 5)
    gateway = running_mesh.gateway
    assert gateway is not None
    request = asyncio.create_task(
        client.post("/v1/images/generations", json=IMAGES, headers=auth, timeout=60)
    )

    async def waiting() -> bool:
        return len(gateway.server_state.tasks) == 1 and len(await _jobs(client, auth)) == 1

    await eventually(waiting)
    await gateway.stop(running_mesh.gateway_task)

    # uvicorn answers a request it cut before its answer began with a plain 500, if it can
    with contextlib.suppress(httpx.TransportError):
        assert (await request).status_code == 500
    grpc_jobs = running_mesh.mesh.stub("jobs", jobs_pb2_grpc.JobsServiceStub)
    listed = await grpc_jobs.ListJobs(
        jobs_pb2.ListJobsRequest(account_id=account_id, livemode=True)
    )
    assert [job.state for job in listed.jobs] == [jobs_pb2.JOB_STATE_CANCELED]


@pytest.mark.without_workers
async def test_a_refused_request_undoes_only_the_jobs_it_made_not_those_it_replayed(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """The first image of a keyed request was made before (its request died after it): the
    repeat replays it, is refused the second for credits, and leaves the first alone."""
    account_id, auth = await _account_with(client, running_mesh, 1)
    body = {**IMAGES, "n": 2}
    digest = openai_images._digest(openai_images.ImageGenerationRequest(**body))
    grpc_jobs = running_mesh.mesh.stub("jobs", jobs_pb2_grpc.JobsServiceStub)
    first = await grpc_jobs.CreateJob(
        jobs_pb2.CreateJobRequest(
            account_id=account_id,
            livemode=True,
            spec=jobs_pb2.JobSpec(
                mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, prompt="a teapot", width=64, height=64
            ),
            idempotency_key="two#0",
            request_digest=digest,
        )
    )

    refused = await client.post(
        "/v1/images/generations", json=body, headers={**auth, "Idempotency-Key": "two"}
    )

    assert error_of(refused) == (402, "insufficient_credits")
    assert [(job["id"], job["status"]) for job in await _jobs(client, auth)] == [
        (first.id, "queued")
    ]


async def test_an_edits_form_fields_are_bounded_in_number_and_size(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """The route streams the image past the 1 MiB body limit, so the fields it keeps in memory
    are held to their own: a security review sent 300 MB of 16 KB fields."""
    _, auth = await _account_with(client, running_mesh, 1)
    many = {f"field{i}": "x" for i in range(40)}
    long = {f"field{i}": "x" * 15_000 for i in range(5)}
    image = {"image": ("photo.png", encode_image("PNG", (64, 64)), "image/png")}
    # One name sent again and again counts each time (it once counted as one field).
    again = {"prompt": ["x"] * 40}

    answers = [
        await client.post(
            "/v1/images/edits", data={"prompt": "x", **form}, files=image, headers=auth
        )
        for form in (many, long)
    ]
    answers.append(await client.post("/v1/images/edits", data=again, files=image, headers=auth))

    assert [error_of(answer) for answer in answers] == [(400, "parameter_invalid")] * 3
    assert "form fields" in answers[0].json()["error"]["message"]
    assert await _jobs(client, auth) == []
