"""Asset content: streamed to its owner's key or to the holder of a valid signed URL."""

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from magicpixels.assets.v1 import assets_pb2
from magicpixels.gateway.accounts import gateway
from magicpixels.gateway.principal import bearer_token
from magicpixels.gateway.errors import ApiError

router = APIRouter(prefix="/v1", tags=["assets"])

# Types a browser renders or runs are never served as such.
_SAFE_TYPES = ("image/png", "image/jpeg", "image/webp", "audio/", "video/mp4")


async def _owner(request: Request, asset_id: str) -> str:
    """The account whose asset this request may read: by signed URL, else by bearer key."""
    mesh = gateway(request)
    if "signature" in request.query_params:
        asset = await mesh.assets.VerifyUrl(
            assets_pb2.VerifyUrlRequest(id=asset_id, query=request.url.query)
        )
        return asset.account_id
    principal = await mesh.principal(bearer_token(request))
    if "assets:read" not in principal.scopes:
        raise ApiError(403, "permission_error", "scope_missing", "This API key lacks the 'assets:read' scope.")
    return principal.account_id


@router.get("/assets/{asset_id}/content", response_class=Response)
async def asset_content(asset_id: str, request: Request) -> Response:
    account_id = await _owner(request, asset_id)
    stream = gateway(request).assets.ReadAsset(
        assets_pb2.ReadAssetRequest(id=asset_id, account_id=account_id)
    )
    first = await anext(aiter(stream))
    asset = first.asset
    etag = f'"{asset.sha256}"'
    headers = {
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
        "Content-Length": str(asset.size_bytes),
    }
    if request.headers.get("if-none-match") == etag:
        stream.cancel()
        return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "Content-Length"})
    content_type = asset.content_type if asset.content_type.startswith(_SAFE_TYPES) else "application/octet-stream"
    return StreamingResponse(_chunks(stream), media_type=content_type, headers=headers)


async def _chunks(stream: AsyncIterator[assets_pb2.ReadAssetResponse]) -> AsyncIterator[bytes]:
    async for message in stream:
        yield message.chunk
