import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.core.errors import remote_error
from magicpixels.core.service import Mesh
from magicpixels.core.settings import AssetsSettings, load_or_create_secret
from magicpixels.services.assets import domain
from magicpixels.services.assets.server import AssetsService
from tests.assets.stores import StoreUnderTest, on_every_store
from tests.conftest import channel_to, serving

Stub = assets_pb2_grpc.AssetsServiceStub
Failure = tuple[grpc.StatusCode, str, dict[str, str]]
ACCOUNT = "acct_owner"
OTHER = "acct_other"
NOT_FOUND: Failure = (grpc.StatusCode.NOT_FOUND, "ASSET_NOT_FOUND", {})


@pytest.fixture
async def stub(database: Any, mesh: Mesh, blob_store: StoreUnderTest) -> AsyncIterator[Stub]:
    service = AssetsService(mesh, database.settings(AssetsSettings, **blob_store.settings()))
    async with serving(service, mesh) as server:
        channel = channel_to(server, mesh)
        yield assets_pb2_grpc.AssetsServiceStub(channel)
        await channel.close()


async def _requests(
    data: bytes, chunk_size: int, **header: Any
) -> AsyncIterator[assets_pb2.UploadAssetRequest]:
    fields = {"account_id": ACCOUNT, "content_type": "image/png"} | header
    yield assets_pb2.UploadAssetRequest(header=assets_pb2.UploadHeader(**fields))
    for start in range(0, len(data), chunk_size):
        yield assets_pb2.UploadAssetRequest(chunk=data[start : start + chunk_size])


async def _upload(stub: Stub, data: bytes, chunk_size: int = 4096, **header: Any) -> Any:
    return await stub.UploadAsset(_requests(data, chunk_size, **header))


async def _read(stub: Stub, asset_id: str, **request: Any) -> tuple[assets_pb2.Asset, bytes]:
    fields = {"id": asset_id, "account_id": ACCOUNT} | request
    call = stub.ReadAsset(assets_pb2.ReadAssetRequest(**fields))
    responses = [response async for response in call]
    assert [response.WhichOneof("payload") for response in responses[1:]] == ["chunk"] * (
        len(responses) - 1
    )
    return responses[0].asset, b"".join(response.chunk for response in responses[1:])


def _get(stub: Stub, asset_id: str, account_id: str = ACCOUNT) -> Any:
    return stub.GetAsset(assets_pb2.GetAssetRequest(id=asset_id, account_id=account_id))


def _delete(stub: Stub, asset_id: str, account_id: str = ACCOUNT) -> Any:
    return stub.DeleteAsset(assets_pb2.DeleteAssetRequest(id=asset_id, account_id=account_id))


def _sign(stub: Stub, asset_id: str, expires_in: int, account_id: str = ACCOUNT) -> Any:
    request = assets_pb2.SignUrlRequest(
        id=asset_id, account_id=account_id, expires_in_seconds=expires_in
    )
    return stub.SignUrl(request)


def _verify(stub: Stub, asset_id: str, query: str) -> Any:
    return stub.VerifyUrl(assets_pb2.VerifyUrlRequest(id=asset_id, query=query))


async def _list_ids(stub: Stub, **request: Any) -> list[str]:
    fields = {"account_id": ACCOUNT} | request
    response = await stub.ListAssets(assets_pb2.ListAssetsRequest(**fields))
    return [asset.id for asset in response.assets]


async def _failure(call: Awaitable[Any]) -> Failure:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = remote_error(caught.value)
    return error.code, error.reason, error.metadata


@on_every_store
@pytest.mark.parametrize(
    ("image_format", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")],
)
async def test_an_image_uploaded_in_small_chunks_is_recorded_and_read_back(
    stub: Stub, encode_image: Any, image_format: str, content_type: str
) -> None:
    data = encode_image(image_format, (300, 200))

    asset = await _upload(stub, data, chunk_size=1000, content_type=content_type.upper())
    read, whole = await _read(stub, asset.id)
    _, part = await _read(stub, asset.id, offset=1000, length=len(data) // 2)

    assert asset.id.startswith("asset_")
    assert (asset.kind, asset.content_type, asset.size_bytes) == (
        assets_pb2.ASSET_KIND_IMAGE,
        content_type,
        len(data),
    )
    assert (asset.sha256, asset.width, asset.height) == (
        hashlib.sha256(data).hexdigest(),
        300,
        200,
    )
    assert (asset.account_id, asset.origin, asset.livemode, asset.job_id) == (
        ACCOUNT,
        assets_pb2.ASSET_ORIGIN_UPLOAD,
        False,
        "",
    )
    assert not asset.HasField("duration_seconds")
    assert read == asset == await _get(stub, asset.id)
    assert whole == data
    assert part == data[1000 : 1000 + len(data) // 2]


@on_every_store
async def test_a_read_past_the_end_is_clipped_and_one_outside_is_refused(
    stub: Stub, encode_image: Any
) -> None:
    data = encode_image("PNG")
    asset = await _upload(stub, data)

    _, tail = await _read(stub, asset.id, offset=len(data) - 5, length=100)

    assert tail == data[-5:]
    assert await _failure(_read(stub, asset.id, offset=len(data))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "RANGE_NOT_SATISFIABLE",
        {"param": "range"},
    )


@on_every_store
async def test_a_truncated_png_is_refused_and_leaves_nothing_behind(
    stub: Stub, encode_image: Any, blob_store: StoreUnderTest
) -> None:
    data = encode_image("PNG")

    failure = await _failure(_upload(stub, data[: len(data) - 100]))

    assert failure == (grpc.StatusCode.FAILED_PRECONDITION, "UNSUPPORTED_MEDIA_TYPE", {})
    assert blob_store.leftovers() == []
    assert await _list_ids(stub) == []


@pytest.mark.parametrize(
    ("content_type", "payload", "reason"),
    [
        ("image/jpeg", "png", "CONTENT_MISMATCH"),
        ("image/png", "text", "UNSUPPORTED_MEDIA_TYPE"),
        ("image/gif", "png", "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
async def test_content_that_is_not_what_was_declared_is_refused(
    stub: Stub,
    encode_image: Any,
    blob_store: StoreUnderTest,
    content_type: str,
    payload: str,
    reason: str,
) -> None:
    data = encode_image("PNG") if payload == "png" else b"just some text, not an image\n" * 100

    failure = await _failure(_upload(stub, data, content_type=content_type))

    assert failure == (grpc.StatusCode.FAILED_PRECONDITION, reason, {})
    assert blob_store.leftovers() == []


async def test_an_oversized_declared_upload_is_refused_before_reading(stub: Stub) -> None:
    failure = await _failure(_upload(stub, b"x" * 10, size_bytes=20 * domain.MIB + 1))

    assert failure == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE", {})


async def test_an_upload_must_open_with_its_header_only(
    stub: Stub, encode_image: Any, blob_store: StoreUnderTest
) -> None:
    async def chunk_first() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        yield assets_pb2.UploadAssetRequest(chunk=b"data")

    async def two_headers() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        async for request in _requests(encode_image("PNG"), 4096):
            yield request
        yield assets_pb2.UploadAssetRequest(header=assets_pb2.UploadHeader(account_id=ACCOUNT))

    assert await _failure(stub.UploadAsset(chunk_first())) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAMETER_MISSING",
        {"param": "header"},
    )
    assert await _failure(stub.UploadAsset(two_headers())) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAMETER_INVALID",
        {"param": "header"},
    )
    assert blob_store.leftovers() == []


async def test_audio_is_probed_for_its_length_whether_uploaded_or_generated(
    stub: Stub, encode_audio: Any
) -> None:
    data = encode_audio("audio/flac", seconds=2.25)
    generated = {"origin": assets_pb2.ASSET_ORIGIN_GENERATED, "job_id": "job_1", "livemode": True}

    uploaded = await _upload(stub, data, content_type="audio/x-flac")
    result = await _upload(stub, data, content_type="audio/flac", **generated)

    assert (uploaded.kind, uploaded.content_type, uploaded.size_bytes) == (
        assets_pb2.ASSET_KIND_AUDIO,
        "audio/flac",
        len(data),
    )
    assert (uploaded.duration_seconds, result.duration_seconds) == (2.25, 2.25)
    assert (result.origin, result.job_id, result.livemode) == (
        assets_pb2.ASSET_ORIGIN_GENERATED,
        "job_1",
        True,
    )
    assert not uploaded.HasField("width")
    assert (await _read(stub, uploaded.id))[1] == data


@on_every_store
async def test_generated_video_is_recorded_with_its_size_and_length_and_uploaded_video_is_not(
    stub: Stub, encode_video: Any, blob_store: StoreUnderTest
) -> None:
    data = encode_video(seconds=1.5, size=(80, 48))
    generated = {"origin": assets_pb2.ASSET_ORIGIN_GENERATED, "job_id": "job_1"}

    video = await _upload(stub, data, content_type="video/mp4", **generated)
    failure = await _failure(_upload(stub, data, content_type="video/mp4"))

    assert (video.kind, video.width, video.height, video.duration_seconds) == (
        assets_pb2.ASSET_KIND_VIDEO,
        80,
        48,
        1.5,
    )
    assert failure == (grpc.StatusCode.FAILED_PRECONDITION, "UNSUPPORTED_MEDIA_TYPE", {})
    assert blob_store.blobs() == [video.sha256]


async def test_another_account_cannot_see_or_touch_an_asset(stub: Stub, encode_image: Any) -> None:
    asset = await _upload(stub, encode_image("PNG"))

    assert await _failure(_get(stub, asset.id, OTHER)) == NOT_FOUND
    assert await _failure(_read(stub, asset.id, account_id=OTHER)) == NOT_FOUND
    assert await _failure(_sign(stub, asset.id, 60, OTHER)) == NOT_FOUND
    assert await _failure(_delete(stub, asset.id, OTHER)) == NOT_FOUND
    assert await _list_ids(stub, account_id=OTHER) == []
    assert (await _read(stub, asset.id))[0] == asset


async def test_list_pages_through_live_assets_of_one_mode_newest_first(
    stub: Stub, encode_image: Any
) -> None:
    uploaded = [await _upload(stub, encode_image("PNG", (8, 8 + n))) for n in range(5)]
    test_mode = await _upload(stub, encode_image("PNG", (9, 9)), livemode=True)
    await _delete(stub, uploaded[2].id)
    newest_first = [asset.id for asset in reversed(uploaded) if asset.id != uploaded[2].id]

    first = await stub.ListAssets(assets_pb2.ListAssetsRequest(account_id=ACCOUNT, page_size=3))
    rest = await stub.ListAssets(
        assets_pb2.ListAssetsRequest(
            account_id=ACCOUNT, page_size=3, page_token=first.next_page_token
        )
    )

    assert [asset.id for asset in [*first.assets, *rest.assets]] == newest_first
    assert (first.next_page_token, rest.next_page_token) == (first.assets[-1].id, "")
    assert await _list_ids(stub) == newest_first
    assert await _list_ids(stub, livemode=True) == [test_mode.id]


@on_every_store
async def test_delete_hides_the_asset_removes_its_blob_and_is_not_repeated(
    stub: Stub, encode_image: Any, blob_store: StoreUnderTest
) -> None:
    asset = await _upload(stub, encode_image("PNG"))

    await _delete(stub, asset.id)

    assert await _failure(_delete(stub, asset.id)) == NOT_FOUND
    assert await _failure(_get(stub, asset.id)) == NOT_FOUND
    assert await _failure(_read(stub, asset.id)) == NOT_FOUND
    assert blob_store.leftovers() == []


async def test_concurrent_deletes_of_one_asset_succeed_once(stub: Stub, encode_image: Any) -> None:
    asset = await _upload(stub, encode_image("PNG"))

    outcomes = await asyncio.gather(
        *(_delete(stub, asset.id) for _ in range(6)), return_exceptions=True
    )

    failures = [outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
    assert len(failures) == 5
    assert {remote_error(failure).reason for failure in failures} == {"ASSET_NOT_FOUND"}


@on_every_store
async def test_concurrent_uploads_of_the_same_bytes_share_one_blob_until_the_last_delete(
    stub: Stub, encode_image: Any, blob_store: StoreUnderTest
) -> None:
    data = encode_image("PNG")
    sha256 = hashlib.sha256(data).hexdigest()

    assets = await asyncio.gather(*(_upload(stub, data, chunk_size=999) for _ in range(5)))

    assert len({asset.id for asset in assets}) == 5
    assert (blob_store.blobs(), blob_store.drafts()) == ([sha256], [])
    for deleted, asset in enumerate(assets[:-1], start=1):
        await _delete(stub, asset.id)
        assert [(await _read(stub, kept.id))[1] for kept in assets[deleted:]] == [data] * (
            len(assets) - deleted
        )
    await _delete(stub, assets[-1].id)
    assert blob_store.leftovers() == []


async def test_a_signed_url_verifies_to_its_asset_for_anyone(stub: Stub, encode_image: Any) -> None:
    asset = await _upload(stub, encode_image("PNG"))

    signed = await _sign(stub, asset.id, 3600)
    verified = await _verify(stub, asset.id, signed.query)

    assert verified == asset
    assert signed.query.startswith(f"expires={signed.expire_time.seconds}&signature=")


@pytest.mark.parametrize("expires_in", [59, 86_401])
async def test_a_url_lifetime_outside_a_minute_to_a_day_is_refused(
    stub: Stub, encode_image: Any, expires_in: int
) -> None:
    asset = await _upload(stub, encode_image("PNG"))

    assert await _failure(_sign(stub, asset.id, expires_in)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAMETER_INVALID",
        {"param": "expires_in"},
    )


async def test_tampered_expired_and_deleted_urls_are_refused(
    stub: Stub, mesh: Mesh, encode_image: Any
) -> None:
    asset = await _upload(stub, encode_image("PNG"))
    signed = await _sign(stub, asset.id, 60)
    key = load_or_create_secret(mesh.settings.data_dir, "assets_url_signing_key").encode()
    expires = signed.expire_time.seconds
    tampered = signed.query.replace(f"expires={expires}", f"expires={expires + 3600}")
    expired = domain.signed_query(key, asset.id, expires - 3600)

    assert await _failure(_verify(stub, asset.id, tampered)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "URL_SIGNATURE_INVALID",
        {},
    )
    assert await _failure(_verify(stub, asset.id, expired)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "URL_EXPIRED",
        {},
    )
    await _delete(stub, asset.id)
    assert await _failure(_verify(stub, asset.id, signed.query)) == NOT_FOUND
