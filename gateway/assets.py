"""Assets: streamed uploads, list, metadata, delete, signed URLs, and the content itself, to its
owner's key or to the holder of a valid signed URL, with ETag revalidation and single byte
ranges (RFC 9110)."""

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict
from starlette.requests import ClientDisconnect

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.gateway import idempotency, multipart, render
from magicpixels.gateway.bodies import Body
from magicpixels.gateway.errors import ApiError
from magicpixels.gateway.jobs import Int32
from magicpixels.gateway.listing import Page, list_object, page
from magicpixels.gateway.principal import Principal, authorize, require
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import gateway

router = APIRouter(prefix="/v1", tags=["assets"])

# Types a browser renders or runs are never served as such.
_SAFE_TYPES = ("image/png", "image/jpeg", "image/webp", "audio/", "video/mp4")
# A download or an upload may stream for this long; the default deadline of internal calls
# would cut it.
DOWNLOAD_SECONDS = 3600
UPLOAD_SECONDS = 3600
# The body arrives in pieces of a few KiB to a few hundred; fewer, larger messages cost less.
UPLOAD_MESSAGE_BYTES = 256 * 1024
# At most 19 digits a position, far past any file here: a longer one (which Python refuses to
# read past 4,300 digits) makes the header one to ignore.
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_FORM = "multipart/form-data"
# The name of the form part that carries the file.
FILE_PART = "file"


class UrlCreate(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    # The assets service checks the bounds (60..86400 seconds).
    expires_in: Int32 = 3600


class AssetUpload:
    """One UploadAsset call fed as the request body arrives; canceled if the request fails
    first, so the service keeps nothing of it."""

    def __init__(self, stub: assets_pb2_grpc.AssetsServiceStub) -> None:
        self._stub = stub
        self._call: Any = None
        self._pending = bytearray()

    @property
    def started(self) -> bool:
        return self._call is not None

    async def __aenter__(self) -> "AssetUpload":
        return self

    async def __aexit__(self, *failure: object) -> None:
        if self._call is not None and not self._call.done():
            self._call.cancel()

    async def start(self, header: assets_pb2.UploadHeader) -> None:
        """Opens the call and waits for the service to accept the header: a refusal (a declared
        size over the limit) then arrives as the service's own answer, not as a failed write."""
        self._call = self._stub.UploadAsset(timeout=UPLOAD_SECONDS)
        await self._send(assets_pb2.UploadAssetRequest(header=header))
        accepted = await self._call.initial_metadata()
        if accepted is None or accepted.get("upload") != "accepted":
            await self._call  # the service refused the header: this raises its answer

    async def send(self, chunk: bytes) -> None:
        """Sends the body's bytes in messages of about UPLOAD_MESSAGE_BYTES."""
        self._pending += chunk
        if len(self._pending) >= UPLOAD_MESSAGE_BYTES:
            await self._flush()

    async def finish(self) -> assets_pb2.Asset:
        await self._flush()
        await self._call.done_writing()
        asset: assets_pb2.Asset = await self._call
        return asset

    async def replay_headers(self) -> dict[str, str]:
        """Once finished: the headers that say whether the upload replayed an earlier one."""
        return await idempotency.replay_headers(self._call)

    async def _flush(self) -> None:
        if self._pending:
            await self._send(assets_pb2.UploadAssetRequest(chunk=bytes(self._pending)))
            self._pending.clear()

    async def _send(self, message: assets_pb2.UploadAssetRequest) -> None:
        try:
            await self._call.write(message)
        except asyncio.InvalidStateError:  # the service refused the upload: its answer says why
            await self._call
            raise


@router.post("/assets", status_code=201)
async def upload_asset(
    request: Request, principal: Annotated[Principal, Depends(require("assets:write"))]
) -> JSONResponse:
    """Uploads a file, streamed to the assets service as it arrives: the raw bytes with their
    `Content-Type`, or `multipart/form-data` with one `file` part (and its `Content-Type`).
    With an Idempotency-Key, the same bytes (type and mode) sent again within 24 h answer the
    asset the first upload made."""
    content_type = request.headers.get("content-type", "")
    header = assets_pb2.UploadHeader(
        account_id=principal.account_id,
        livemode=principal.livemode,
        idempotency_key=idempotency.key_of(request),
    )
    try:
        async with AssetUpload(gateway(request).assets) as upload:
            if content_type.split(";", 1)[0].strip().lower() == _FORM:
                await _stream_form(upload, header, content_type, request.stream())
            else:
                await _stream_raw(upload, header, content_type, request)
            asset = await upload.finish()
            headers = await upload.replay_headers()
    except ClientDisconnect:
        raise ApiError(
            400,
            "invalid_request_error",
            "body_incomplete",
            "The connection closed before the whole body arrived.",
        ) from None
    return JSONResponse(render.asset(asset), status_code=201, headers=headers)


async def _stream_raw(
    upload: AssetUpload, header: assets_pb2.UploadHeader, content_type: str, request: Request
) -> None:
    header.content_type = content_type
    length = request.headers.get("content-length", "")
    if length.isdigit():  # so the service refuses an oversized file before reading it
        header.size_bytes = int(length)
    await upload.start(header)
    async for chunk in request.stream():
        await upload.send(chunk)


async def _stream_form(
    upload: AssetUpload,
    header: assets_pb2.UploadHeader,
    content_type: str,
    body: AsyncIterator[bytes],
) -> None:
    try:
        boundary = multipart.boundary_of(content_type)
        async for event in multipart.parse(boundary, body):
            if isinstance(event, multipart.Part):
                header.content_type = _file_type(event, upload.started)
                await upload.start(header)
            else:
                await upload.send(event)
    except multipart.MultipartError as error:
        raise ApiError(
            400, "invalid_request_error", "multipart_invalid", f"The multipart body: {error}."
        ) from None
    if not upload.started:
        raise _form_error("parameter_missing", f"Send the file as a '{FILE_PART}' part.")


def _file_type(part: multipart.Part, file_seen: bool) -> str:
    """The declared type of the form's one `file` part; any other part is refused."""
    if part.name != FILE_PART:
        raise ApiError(
            400,
            "invalid_request_error",
            "parameter_unknown",
            f"The form has a part named {part.name!r}; only '{FILE_PART}' is accepted.",
            param=part.name,
        )
    if file_seen:
        raise _form_error("parameter_invalid", f"Send one '{FILE_PART}' part, not several.")
    if not part.content_type:
        raise _form_error(
            "parameter_missing",
            f"The '{FILE_PART}' part has no Content-Type: send the file's type, e.g. image/png.",
        )
    return part.content_type


def _form_error(code: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", code, message, param=FILE_PART)


@router.get("/assets")
async def list_assets(
    request: Request,
    principal: Annotated[Principal, Depends(require("assets:read"))],
    requested: Annotated[Page, Depends(page)],
) -> dict[str, Any]:
    """The account's assets of the key's mode, newest first."""
    listed = await gateway(request).assets.ListAssets(
        assets_pb2.ListAssetsRequest(
            account_id=principal.account_id, livemode=principal.livemode, **requested.rpc
        )
    )
    return list_object([render.asset(found) for found in listed.assets], listed.next_page_token)


@router.get("/assets/{asset_id}")
async def get_asset(
    asset_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("assets:read"))],
) -> dict[str, Any]:
    found = await gateway(request).assets.GetAsset(
        assets_pb2.GetAssetRequest(
            id=asset_id, account_id=principal.account_id, livemode=principal.livemode
        )
    )
    return render.asset(found)


@router.delete("/assets/{asset_id}")
async def delete_asset(
    asset_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("assets:write"))],
) -> dict[str, Any]:
    """Deletes the asset: its content and signed URLs stop working at once."""
    await gateway(request).assets.DeleteAsset(
        assets_pb2.DeleteAssetRequest(
            id=asset_id, account_id=principal.account_id, livemode=principal.livemode
        )
    )
    # A job whose result it was now shows no URL; other gateways' views of it expire soon.
    gateway(request).job_views.forget_all()
    return {"object": "asset", "id": asset_id, "deleted": True}


@router.post("/assets/{asset_id}/url")
async def sign_asset_url(
    asset_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("assets:read"))],
    body: UrlCreate | None = None,
) -> dict[str, str]:
    """A URL of the content that anyone holding it may fetch until it expires."""
    expires_in = (body or UrlCreate()).expires_in
    url, expires_at = await gateway(request).signed_content_url(
        asset_id, principal.account_id, expires_in, livemode=principal.livemode
    )
    return {"url": url, "expires_at": expires_at}


# The query of a signed URL (services/assets/domain.signed_query).
_SIGNED_URL_PARAMS = frozenset({"expires", "signature"})


async def _readable(request: Request, asset_id: str) -> tuple[assets_pb2.Asset, bool | None]:
    """The asset this request may read, and the mode to read it in: a signed URL names the
    asset itself (any mode); a bearer key, its account's assets of its own mode."""
    if not _SIGNED_URL_PARAMS.isdisjoint(request.query_params):  # a part missing: 403, not 401
        verified = await gateway(request).assets.VerifyUrl(
            assets_pb2.VerifyUrlRequest(id=asset_id, query=request.url.query)
        )
        return verified, None
    principal = await authorize(request, "assets:read")
    found = await gateway(request).assets.GetAsset(
        assets_pb2.GetAssetRequest(
            id=asset_id, account_id=principal.account_id, livemode=principal.livemode
        )
    )
    return found, principal.livemode


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single satisfiable `Range`; None to send the whole content."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return None  # absent, several ranges, or another unit: the whole content is allowed
    first, last = match.groups()
    if first and last and int(last) < int(first):
        return None  # not a valid range (RFC 9110, 14.1.1), so the header is ignored
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
        # Kept, but asked again (a 304 while nothing changed): a deleted asset, an expired URL
        # or a revoked key stops serving it at once, which a max-age outlived.
        "Cache-Control": "private, no-cache",
    }


def _unchanged(request: Request, etag: str) -> bool:
    """`If-None-Match` names the asset's ETag (RFC 9110: any of a list, weakly, or `*`)."""
    asked = request.headers.get("if-none-match")
    if asked is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in asked.split(",")}
    return "*" in tags or etag in tags


def _range_of(request: Request, etag: str) -> str | None:
    """`Range`, unless an `If-Range` names another version than this (then the whole)."""
    condition = request.headers.get("if-range")
    if condition is not None and condition.strip() != etag:
        return None
    return request.headers.get("range")


def _media_type(asset: assets_pb2.Asset) -> str:
    safe = asset.content_type.startswith(_SAFE_TYPES)
    return asset.content_type if safe else "application/octet-stream"


@router.api_route("/assets/{asset_id}/content", methods=["GET", "HEAD"], response_class=Response)
async def asset_content(asset_id: str, request: Request) -> Response:
    """The bytes, for the owner's key or a signed URL. `Range` gives 206; `If-None-Match` 304."""
    asset, livemode = await _readable(request, asset_id)
    account_id = asset.account_id
    assets = gateway(request).assets
    headers = _headers(asset)
    if _unchanged(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    span = byte_range(_range_of(request, headers["ETag"]), asset.size_bytes)
    offset, length = span or (0, asset.size_bytes)
    headers["Content-Length"] = str(length)
    if span is not None:
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{asset.size_bytes}"
    status = 206 if span else 200
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=_media_type(asset))
    stream = assets.ReadAsset(
        assets_pb2.ReadAssetRequest(
            id=asset_id, account_id=account_id, offset=offset, length=length, livemode=livemode
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
