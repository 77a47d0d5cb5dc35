"""Jobs that take input assets, against real billing, assets and jobs services: inputs are
checked for owner, mode (test or live) and kind, sizes and prices follow them."""

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.errors import remote_error
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.mesh import RunningMesh
from tests.support import Database, services_of

OWNER = "acct_owner"


@pytest.fixture
async def services(database: Database, tmp_path: Path) -> AsyncIterator[RunningMesh]:
    names = ("billing", "assets", "jobs")
    async with services_of(database, tmp_path / "mesh", names, {OWNER: 500}) as running:
        yield running


async def upload_png(
    running: RunningMesh, size: tuple[int, int], account_id: str = OWNER, livemode: bool = True
) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format="PNG")
    return await upload(running, buffer.getvalue(), "image/png", account_id, livemode)


async def upload(
    running: RunningMesh,
    data: bytes,
    content_type: str,
    account_id: str,
    livemode: bool,
    **header: Any,
) -> str:
    assets = assets_pb2_grpc.AssetsServiceStub(running.mesh.channel("assets"))

    async def requests() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        yield assets_pb2.UploadAssetRequest(
            header=assets_pb2.UploadHeader(
                account_id=account_id, livemode=livemode, content_type=content_type, **header
            )
        )
        yield assets_pb2.UploadAssetRequest(chunk=data)

    return (await assets.UploadAsset(requests())).id


def silent_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


async def create(running: RunningMesh, livemode: bool = True, **fields: Any) -> jobs_pb2.Job:
    jobs = jobs_pb2_grpc.JobsServiceStub(running.mesh.channel("jobs"))
    spec = jobs_pb2.JobSpec(**fields)
    return await jobs.CreateJob(
        jobs_pb2.CreateJobRequest(account_id=OWNER, livemode=livemode, spec=spec)
    )


async def refusal(running: RunningMesh, **fields: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(running, **fields)
    error = remote_error(caught.value)
    return error.code, error.reason, error.metadata.get("param", "")


async def test_image_to_image_is_sized_like_its_input(services: RunningMesh) -> None:
    image = await upload_png(services, (333, 250))

    job = await create(
        services, mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, prompt="as a woodcut", input_asset_id=image
    )

    assert (job.state, job.cost_credits) == (jobs_pb2.JOB_STATE_QUEUED, 1)
    assert (job.spec.width, job.spec.height, job.spec.input_asset_id) == (328, 248, image)


@pytest.mark.parametrize(
    ("fields", "cost"),
    [
        ({"mode": jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, "prompt": "rain", "duration_seconds": 25}, 3),
        ({"mode": jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, "prompt": "rain"}, 1),
        ({"mode": jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO, "duration_seconds": 2.5}, 66),
        ({"mode": jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO}, 88),
    ],
)
async def test_each_mode_costs_what_the_price_table_says(
    services: RunningMesh, fields: dict[str, Any], cost: int
) -> None:
    if fields["mode"] == jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO:
        fields["input_asset_id"] = await upload_png(services, (640, 360))

    job = await create(services, **fields)

    assert job.cost_credits == cost


async def test_another_accounts_asset_is_not_found(services: RunningMesh) -> None:
    theirs = await upload_png(services, (64, 64), account_id="acct_other")

    found = await refusal(
        services, mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, prompt="p", input_asset_id=theirs
    )

    assert found == (grpc.StatusCode.NOT_FOUND, "ASSET_NOT_FOUND", "input_asset_id")


async def test_a_test_key_cannot_use_a_live_asset(services: RunningMesh) -> None:
    live = await upload_png(services, (64, 64), livemode=True)

    found = await refusal(
        services,
        livemode=False,
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE,
        prompt="p",
        input_asset_id=live,
    )

    assert found == (grpc.StatusCode.NOT_FOUND, "ASSET_NOT_FOUND", "input_asset_id")


async def test_an_input_of_the_wrong_kind_is_refused_and_nothing_is_held(
    services: RunningMesh,
) -> None:
    audio = await upload(
        services,
        silent_wav(),
        "audio/wav",
        OWNER,
        True,
        origin=assets_pb2.ASSET_ORIGIN_GENERATED,
        job_id="job_earlier",
    )

    found = await refusal(services, mode=jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO, input_asset_id=audio)

    assert found == (grpc.StatusCode.INVALID_ARGUMENT, "ASSET_KIND_MISMATCH", "input_asset_id")
    billing = billing_pb2_grpc.BillingServiceStub(services.mesh.channel("billing"))
    balance = await billing.GetBalance(billing_pb2.GetBalanceRequest(account_id=OWNER))
    assert (balance.available, balance.reserved) == (500, 0)
