"""Job control through the SDK against a running mesh: quotes (the price table's, spending
nothing), deadlines (ending `deadline_exceeded`), and queue positions in reads and streams."""

import asyncio
import math
from typing import Any

import httpx
import pytest

from magicpixels_sdk import (
    DEADLINE_EXCEEDED,
    AsyncMagicPixels,
    InvalidRequestError,
    JobFailedError,
    MagicPixels,
    NotFoundError,
    Quote,
)
from tests.assets.samples import encode_image
from tests.sdk.conftest import Account
from tests.support import eventually

SMALL = {"width": 64, "height": 64}


async def _spent(account: Account) -> tuple[Any, ...]:
    """Everything a quote must leave as it was: credits, ledger entries, jobs."""
    auth = {"Authorization": f"Bearer {account.token}"}
    async with httpx.AsyncClient(base_url=account.base_url, headers=auth) as http:
        answers = [await http.get(path) for path in ("/v1/account", "/v1/credits/ledger")]
        jobs = await http.get("/v1/jobs")
    return answers[0].json()["credits"], answers[1].json()["data"], jobs.json()["data"]


async def test_a_quote_is_the_price_tables_and_spends_nothing(
    sdk: AsyncMagicPixels, account: Account
) -> None:
    image = await sdk.assets.upload(encode_image("PNG", (64, 48)))
    async with httpx.AsyncClient(base_url=account.base_url) as http:
        table = (await http.get("/v1/pricing")).json()["data"]
    prices = {price["mode"]: price for price in table}
    asked: list[tuple[str, dict[str, Any], float]] = [
        ("text_to_image", SMALL, 0),
        ("image_to_image", {"input_asset_id": image.id}, 0),
        ("text_to_audio", {"duration_seconds": 25}, 25),
        ("image_to_video", {"input_asset_id": image.id, "duration_seconds": 4.5}, 4.5),
    ]
    before = await _spent(account)

    quotes = [await sdk.jobs.quote(mode, "a quote", **params) for mode, params, _ in asked]

    def sync_quote() -> Quote:
        with MagicPixels(account.token, base_url=account.base_url) as client:
            return client.jobs.quote("text_to_audio", "rain", duration_seconds=25)

    assert await asyncio.to_thread(sync_quote) == quotes[2]
    for (mode, _, duration), quote in zip(asked, quotes, strict=True):
        price = prices[mode]
        blocks = 1 if price["unit"] == "job" else math.ceil(duration / price["unit_block"])
        cost = price["credits"] * blocks
        assert quote == Quote(mode, cost, 100, cost <= 100, raw={})
        assert quote.raw["object"] == "quote"
    assert not quotes[3].sufficient  # 5 started seconds of video cost more than 100 credits
    assert await _spent(account) == before


async def test_a_bad_quote_raises_what_a_bad_create_raises(sdk: AsyncMagicPixels) -> None:
    for params, error in (
        ({**SMALL, "deadline_seconds": 0}, InvalidRequestError),
        ({**SMALL, "width": 65}, InvalidRequestError),
        ({"input_asset_id": "asset_missing"}, NotFoundError),
    ):
        mode = "image_to_image" if "input_asset_id" in params else "text_to_image"
        with pytest.raises(error) as quoted:
            await sdk.jobs.quote(mode, "a", **params)
        with pytest.raises(error) as created:
            await sdk.jobs.create(mode, "a", **params)
        assert (quoted.value.code, quoted.value.param) == (created.value.code, created.value.param)


@pytest.mark.without_workers
async def test_a_deadline_set_through_the_sdk_cancels_and_refunds_the_job(
    sdk: AsyncMagicPixels,
) -> None:
    job = await sdk.jobs.create("text_to_image", "too late", deadline_seconds=1, **SMALL)

    with pytest.raises(JobFailedError) as failed:
        await sdk.jobs.wait(job, timeout=60, raise_on_failure=True)

    async def refunded() -> bool:
        credits = (await sdk.account.get()).credits
        return (credits.available, credits.reserved) == (100, 0)

    await eventually(refunded)
    assert job.deadline_at is not None
    assert job.created_at is not None
    assert (job.deadline_at - job.created_at).total_seconds() == 1
    assert failed.value.code == DEADLINE_EXCEEDED
    ended = failed.value.job
    assert (ended.status, ended.queue_position) == ("canceled", None)
    assert ended.error is not None
    assert ended.error.code == DEADLINE_EXCEEDED


@pytest.mark.without_workers
async def test_queue_positions_through_get_and_the_stream(sdk: AsyncMagicPixels) -> None:
    ahead = [await sdk.jobs.create("text_to_image", f"first {i}", **SMALL) for i in range(2)]
    job = await sdk.jobs.create("text_to_image", "third", **SMALL)
    read = [(await sdk.jobs.get(found)).queue_position for found in (*ahead, job)]
    stream = sdk.jobs.stream(job)
    events = [await anext(stream)]
    for earlier in ahead:
        await sdk.jobs.cancel(earlier)
        events.append(await anext(stream))
    await sdk.jobs.cancel(job)
    events.append(await anext(stream))
    rest = [event async for event in stream]  # the stream ends with the job

    assert [found.queue_position for found in (*ahead, job)] == [0, 1, 2]
    assert read == [0, 1, 2]
    assert [(e.event, e.job.status, e.queue_position) for e in events] == [
        ("status", "queued", 2),
        ("queue_position", "queued", 1),
        ("queue_position", "queued", 0),
        ("status", "canceled", None),
    ]
    assert rest == []
