"""Putting input media into a real assets service, as a client's upload would."""

from collections.abc import AsyncIterator

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc

CHUNK_BYTES = 16 * 1024


async def upload(
    assets: assets_pb2_grpc.AssetsServiceStub,
    data: bytes,
    content_type: str,
    account_id: str,
    livemode: bool = True,
) -> assets_pb2.Asset:
    async def requests() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        header = assets_pb2.UploadHeader(
            account_id=account_id,
            livemode=livemode,
            content_type=content_type,
            origin=assets_pb2.ASSET_ORIGIN_UPLOAD,
        )
        yield assets_pb2.UploadAssetRequest(header=header)
        for start in range(0, len(data), CHUNK_BYTES):
            yield assets_pb2.UploadAssetRequest(chunk=data[start : start + CHUNK_BYTES])

    return await assets.UploadAsset(requests())
