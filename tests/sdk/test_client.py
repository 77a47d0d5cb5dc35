"""The SDK against a running mesh: every mode, wait, stream, list, cancel, uploads, downloads,
and the API's errors as typed exceptions."""

import asyncio
import io
from pathlib import Path

import httpx
import pytest

from magicpixels_sdk import (
    AsyncMagicPixels,
    AuthenticationError,
    BillingError,
    ConflictError,
    InvalidRequestError,
    JobFailedError,
    MagicPixels,
    NotFoundError,
    WaitTimeoutError,
)
from tests.assets.samples import encode_audio, encode_image
from tests.sdk.conftest import Account

SMALL = {"width": 64, "height": 64}


async def test_every_mode_from_upload_to_download(sdk: AsyncMagicPixels, tmp_path: Path) -> None:
    image = await sdk.assets.upload(encode_image("PNG", (64, 48)))
    sound = tmp_path / "voice.wav"
    sound.write_bytes(encode_audio("audio/wav", seconds=1.0))
    audio = await sdk.assets.upload(sound)
    assert (image.kind, image.width, image.content_type) == ("image", 64, "image/png")
    assert (audio.kind, audio.content_type) == ("audio", "audio/wav")

    runs = await asyncio.gather(
        sdk.jobs.run("text_to_image", "a red fox", **SMALL, timeout=60),
        sdk.jobs.run("image_to_image", "in blue", input_asset_id=image.id, strength=0.5),
        sdk.jobs.run("text_to_audio", "a slow drum", duration_seconds=1, output_format="flac"),
        sdk.jobs.run(
            "image_to_video",
            "zoom",
            input_asset_id=image.id,
            audio_asset_id=audio.id,
            duration_seconds=1,
            fps=8,
        ),
    )
    expected = ("image/png", "image/png", "audio/flac", "video/mp4")
    assert [job.result.content_type for job in runs if job.result] == list(expected)
    assert all(job.status == "completed" and job.done for job in runs)
    assert (runs[0].result.width, runs[1].params["strength"]) == (64, 0.5)  # type: ignore[union-attr]

    for job in runs:
        assert job.result is not None
        target = tmp_path / job.id
        size = await sdk.assets.download(job.result.asset_id, target)
        asset = await sdk.assets.get(job.result.asset_id)
        assert size == asset.size_bytes == target.stat().st_size
        assert (asset.origin, asset.job_id) == ("generated", job.id)
    assert (tmp_path / runs[0].id).read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / runs[2].id).read_bytes().startswith(b"fLaC")


async def test_wait_long_polls_and_stream_follows_to_the_end(sdk: AsyncMagicPixels) -> None:
    created = await sdk.jobs.create("text_to_image", "a lighthouse", **SMALL)
    assert created.status in ("queued", "running", "completed")
    events = [event async for event in sdk.jobs.stream(created.id)]
    assert events[-1].event == "status"
    assert events[-1].job.status == "completed"
    assert {event.event for event in events} <= {"status", "progress", "queue_position"}
    ended = await sdk.jobs.create("text_to_image", "a pier", wait=30, **SMALL)
    assert ended.status == "completed"  # Prefer: wait answered once it ended
    waited = await sdk.jobs.wait(created.id, timeout=30)
    assert waited.status == "completed"
    assert waited.result is not None
    assert waited.result.url is not None


async def test_the_sync_client_lists_all_pages_and_passes_unknown_fields(
    account: Account,
) -> None:
    def use() -> None:
        with MagicPixels(account.token, base_url=account.base_url) as client:
            made = [client.jobs.create("text_to_image", f"tile {i}", **SMALL) for i in range(3)]
            listed = list(client.jobs.list(page_size=2))
            assert [job.id for job in listed] == [job.id for job in reversed(made)]
            assert [j.id for j in client.jobs.list(mode="text_to_audio")] == []
            finished = client.jobs.wait(made[0], timeout=30)
            assert finished.status == "completed"
            events = list(client.jobs.stream(made[1]))
            assert events[-1].job.done
            assert client.account.get().credits.available <= 97
            # A field this SDK version has no argument for reaches the API as it is.
            with pytest.raises(InvalidRequestError) as refused:
                client.jobs.create("text_to_image", "x", brand_new_field=1)
            assert (refused.value.code, refused.value.param) == (
                "parameter_unknown",
                "brand_new_field",
            )

    await asyncio.to_thread(use)


async def test_keys_the_ledger_and_prices_sync_and_async(
    sdk: AsyncMagicPixels, account: Account
) -> None:
    made = await sdk.api_keys.create("ci", mode="test", scopes=["jobs:read"])
    again = await sdk.api_keys.create(
        "ci", mode="test", scopes=["jobs:read"], idempotency_key="key-once"
    )
    replayed = await sdk.api_keys.create(
        "ci", mode="test", scopes=["jobs:read"], idempotency_key="key-once"
    )
    listed = [key.id async for key in sdk.api_keys.list(page_size=1)]
    revoked = await sdk.api_keys.revoke(made.id)
    entries = [entry async for entry in sdk.account.ledger()]
    prices = await sdk.account.pricing()

    assert (made.mode, made.scopes, made.token is not None) == ("test", ("jobs:read",), True)
    assert (replayed.id, replayed.token) == (again.id, again.token)
    assert listed == [again.id, made.id, listed[2]]  # newest first: and the signup's key
    assert (revoked.revoked_at is not None, revoked.token) == (True, None)
    assert [(entry.type, entry.amount) for entry in entries][-1] == ("grant", 100)
    assert {price.mode: price.credits for price in prices}["image_to_video"] == 22

    def use() -> None:
        with MagicPixels(account.token, base_url=account.base_url) as client:
            assert [key.id for key in client.api_keys.list()] == listed
            assert client.account.ledger(page_size=1).__next__() == entries[0]
            assert client.account.pricing() == prices

    await asyncio.to_thread(use)


async def test_a_signup_its_plan_and_its_webhook_secret(account: Account) -> None:
    async with AsyncMagicPixels(base_url=account.base_url) as anonymous:
        signup = await anonymous.account.create("sdk@example.com", idempotency_key="signup-1")
        again = await anonymous.account.create("sdk@example.com", idempotency_key="signup-1")
    assert again == signup
    assert signup.api_key.token is not None
    assert signup.webhook_secret.startswith("whsec_")

    async with AsyncMagicPixels(signup.api_key.token, base_url=account.base_url) as sdk:
        plans = await sdk.account.plans()
        subscribed = await sdk.account.subscribe("free")
        found = await sdk.account.subscription()
        canceled = await sdk.account.cancel_subscription()
        secret = await sdk.account.rotate_webhook_secret(grace_period_seconds=0)

    assert plans[0].id == "free"
    assert (subscribed.plan, subscribed.status) == ("free", "active")
    assert found.id == subscribed.id
    assert canceled.cancel_at_period_end
    assert secret.startswith("whsec_")
    assert secret != signup.webhook_secret

    def use() -> None:
        with MagicPixels(signup.api_key.token, base_url=account.base_url) as client:
            assert client.account.plans() == plans
            assert client.account.subscription().id == subscribed.id

    await asyncio.to_thread(use)


@pytest.mark.without_workers
async def test_cancel_and_a_wait_that_times_out(sdk: AsyncMagicPixels) -> None:
    job = await sdk.jobs.create("text_to_image", "never run", **SMALL)
    with pytest.raises(WaitTimeoutError) as late:
        await sdk.jobs.wait(job, timeout=1)
    assert late.value.job.status == "queued"
    canceled = await sdk.jobs.cancel(job.id)
    assert canceled.status == "canceled"
    with pytest.raises(ConflictError) as again:
        await sdk.jobs.cancel(job.id)
    assert again.value.code == "job_not_cancelable"
    assert again.value.status == 409
    with pytest.raises(JobFailedError):
        await sdk.jobs.wait(job.id, raise_on_failure=True)


async def test_idempotent_creates_make_one_job(sdk: AsyncMagicPixels) -> None:
    first = await sdk.jobs.create("text_to_image", "once", idempotency_key="k-1", **SMALL)
    second = await sdk.jobs.create("text_to_image", "once", idempotency_key="k-1", **SMALL)
    assert first.id == second.id
    with pytest.raises(ConflictError) as reused:
        await sdk.jobs.create("text_to_image", "twice", idempotency_key="k-1", **SMALL)
    assert reused.value.code == "idempotency_key_reused"


async def test_errors_are_typed_with_code_param_and_request_id(
    sdk: AsyncMagicPixels, account: Account
) -> None:
    with pytest.raises(NotFoundError) as missing:
        await sdk.jobs.get("job_0000000000000000000000000000")
    assert missing.value.code == "job_not_found"
    assert missing.value.request_id
    assert missing.value.request_id.startswith("req_")
    with pytest.raises(InvalidRequestError) as invalid:
        await sdk.jobs.create("text_to_image", "x", width=65, height=64)
    assert (invalid.value.code, invalid.value.param) == ("parameter_invalid", "width")
    with pytest.raises(InvalidRequestError) as unknown:
        await sdk.jobs.create("painting", "x")
    assert unknown.value.code == "mode_unknown"
    with pytest.raises(InvalidRequestError) as not_media:
        await sdk.assets.upload(io.BytesIO(b"plain text, not an image"), content_type="image/png")
    assert not_media.value.status == 415
    async with AsyncMagicPixels("mp_live_nope", base_url=account.base_url) as stranger:
        with pytest.raises(AuthenticationError) as refused:
            await stranger.jobs.get("job_x")
    assert refused.value.status == 401


async def test_an_account_without_credits_gets_a_billing_error(account: Account) -> None:
    async with httpx.AsyncClient(base_url=account.base_url) as http:
        answer = await http.post("/v1/accounts", json={"email": "bob@example.com"})
    token = answer.json()["api_key"]["token"]
    async with AsyncMagicPixels(token, base_url=account.base_url) as poor:
        with pytest.raises(BillingError) as refused:
            await poor.jobs.create("text_to_image", "x", **SMALL)
    assert refused.value.code == "insufficient_credits"
    assert refused.value.status == 402
