"""Asset content: streamed to its owner's key or to the holder of a valid signed URL, with
ETag revalidation and single byte ranges (RFC 9110)."""

import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from magicpixels.assets.v1 import assets_pb2
from magicpixels.gateway.errors import ApiError
from magicpixels.gateway.principal import authorize
from magicpixels.gateway.state import gateway

router = APIRouter(prefix="/v1", tags=["assets"])

# Types a browser renders or runs are never served as such.
_SAFE_TYPES = ("image/png", "image/jpeg", "image/webp", "audio/", "video/mp4")
# A download may stream for this long; the default deadline of internal calls would cut it.
DOWNLOAD_SECONDS = 3600
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


async def _owner(request: Request, asset_id: str) -> str:
    """The account whose asset this request may read: by signed URL, else by bearer key."""
    if "signature" in request.query_params:
        asset = await gateway(request).assets.VerifyUrl(
            assets_pb2.VerifyUrlRequest(id=asset_id, query=request.url.query)
        )
        return asset.account_id
    return (await authorize(request, "assets:read")).account_id


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single satisfiable `Range`; None to send the whole content."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return None  # absent, several ranges, or another unit: the whole content is allowed
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or start > end:
        raise ApiError(
            416,
            "invalid_request_error",
            "range_not_satisfiable",
            f"the range {header} is outside the {size} bytes of the asset",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end - start + 1


def _headers(asset: assets_pb2.Asset) -> dict[str, str]:
    return {
        "ETag": f'"{asset.sha256}"',
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
    }


def _media_type(asset: assets_pb2.Asset) -> str:
    safe = asset.content_type.startswith(_SAFE_TYPES)
    return asset.content_type if safe else "application/octet-stream"


@router.api_route("/assets/{asset_id}/content", methods=["GET", "HEAD"], response_class=Response)
async def asset_content(asset_id: str, request: Request) -> Response:
    """The bytes, for the owner's key or a signed URL. `Range` gives 206; `If-None-Match` 304."""
    account_id = await _owner(request, asset_id)
    assets = gateway(request).assets
    asset = await assets.GetAsset(assets_pb2.GetAssetRequest(id=asset_id, account_id=account_id))
    headers = _headers(asset)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    span = byte_range(request.headers.get("range"), asset.size_bytes)
    offset, length = span or (0, asset.size_bytes)
    headers["Content-Length"] = str(length)
    if span is not None:
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{asset.size_bytes}"
    status = 206 if span else 200
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=_media_type(asset))
    stream = assets.ReadAsset(
        assets_pb2.ReadAssetRequest(
            id=asset_id, account_id=account_id, offset=offset, length=length
        ),
        timeout=DOWNLOAD_SECONDS,
    )
    return StreamingResponse(
        _chunks(stream), status_code=status, media_type=_media_type(asset), headers=headers
    )


async def _chunks(stream: AsyncIterator[assets_pb2.ReadAssetResponse]) -> AsyncIterator[bytes]:
    async for message in stream:
        if message.WhichOneof("payload") == "chunk":
            yield message.chunk
