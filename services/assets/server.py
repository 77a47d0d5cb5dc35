"""The AssetsService servicer and the assets Service."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.core import eventloop, idempotency, metrics, paging
from magicpixels.core.errors import DomainError, InvalidArgument, NotFound
from magicpixels.core.server import ServiceBinding
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import AssetsSettings, secret_value
from magicpixels.core.timestamps import to_timestamp, utcnow
from magicpixels.services.assets import domain, store
from magicpixels.services.assets.blobs import BlobStore, LocalBlobStore
from magicpixels.services.assets.catalog import Catalog
from magicpixels.services.assets.domain import AssetRecord, Kind, Origin
from magicpixels.services.assets.s3 import S3BlobStore

# Initial metadata of an UploadAsset whose header was accepted (see UploadAsset).
UPLOAD_ACCEPTED = (("upload", "accepted"),)
SERVICE_NAME = assets_pb2.DESCRIPTOR.services_by_name["AssetsService"].full_name

_KINDS = {
    Kind.IMAGE: assets_pb2.ASSET_KIND_IMAGE,
    Kind.AUDIO: assets_pb2.ASSET_KIND_AUDIO,
    Kind.VIDEO: assets_pb2.ASSET_KIND_VIDEO,
}
_ORIGINS = {
    Origin.UPLOAD: assets_pb2.ASSET_ORIGIN_UPLOAD,
    Origin.GENERATED: assets_pb2.ASSET_ORIGIN_GENERATED,
}
# An upload that does not say where it comes from gets the stricter rules of an upload.
_DECLARED_ORIGINS = {
    assets_pb2.ASSET_ORIGIN_UNSPECIFIED: Origin.UPLOAD,
    **{value: origin for origin, value in _ORIGINS.items()},
}


_ByOwner = (
    assets_pb2.GetAssetRequest
    | assets_pb2.ReadAssetRequest
    | assets_pb2.DeleteAssetRequest
    | assets_pb2.SignUrlRequest
)


class AssetsServicer(assets_pb2_grpc.AssetsServiceServicer):
    def __init__(self, catalog: Catalog, signing_key: bytes) -> None:
        self._catalog = catalog
        self._signing_key = signing_key

    async def _owned(self, request: _ByOwner) -> AssetRecord:
        """The account's asset the request names; of the mode it names, when it names one."""
        record = await self._catalog.get(request.id, request.account_id)
        if request.HasField("livemode") and record.livemode != request.livemode:
            raise NotFound("ASSET_NOT_FOUND", f"no asset {request.id}")
        return record

    async def UploadAsset(
        self,
        request_iterator: AsyncIterator[assets_pb2.UploadAssetRequest],
        context: grpc.aio.ServicerContext,
    ) -> assets_pb2.Asset:
        messages = aiter(request_iterator)
        header = await _header(messages)
        plan = domain.plan_upload(
            account_id=header.account_id,
            livemode=header.livemode,
            content_type=header.content_type,
            origin=_DECLARED_ORIGINS.get(header.origin),
            job_id=header.job_id,
            declared_size=header.size_bytes if header.HasField("size_bytes") else None,
            idempotency_key=header.idempotency_key,
        )
        # Says the header was accepted: a client waits for this before sending the bytes, so
        # a refused header (a declared size over the limit) is answered before any write races
        # the refusal.
        await context.send_initial_metadata(UPLOAD_ACCEPTED)
        try:
            record, replayed = await self._catalog.upload(plan, _chunks(messages))
        except DomainError:
            await _drain(messages)
            raise
        if replayed:
            context.set_trailing_metadata(idempotency.REPLAYED)
        else:
            metrics.UPLOAD_BYTES.labels("assets", str(plan.origin)).inc(record.size_bytes)
        return _asset(record)

    async def ReadAsset(
        self, request: assets_pb2.ReadAssetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[assets_pb2.ReadAssetResponse]:
        record = await self._owned(request)
        offset, length = domain.byte_range(record.size_bytes, request.offset, request.length)
        yield assets_pb2.ReadAssetResponse(asset=_asset(record))
        async for chunk in self._catalog.read(record, offset, length):
            yield assets_pb2.ReadAssetResponse(chunk=chunk)

    async def GetAsset(
        self, request: assets_pb2.GetAssetRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.Asset:
        return _asset(await self._owned(request))

    async def ListAssets(
        self, request: assets_pb2.ListAssetsRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.ListAssetsResponse:
        limit = paging.page_size(request.page_size)
        records = await self._catalog.list_assets(
            request.account_id, request.livemode, limit + 1, request.page_token or None
        )
        found, next_page_token = paging.page(records, limit)
        return assets_pb2.ListAssetsResponse(
            assets=[_asset(record) for record in found], next_page_token=next_page_token
        )

    async def DeleteAsset(
        self, request: assets_pb2.DeleteAssetRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.DeleteAssetResponse:
        await self._owned(request)
        await self._catalog.delete(request.id, request.account_id)
        return assets_pb2.DeleteAssetResponse()

    async def SignUrl(
        self, request: assets_pb2.SignUrlRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.SignUrlResponse:
        expires = domain.url_expiry(utcnow(), request.expires_in_seconds)
        record = await self._owned(request)
        return assets_pb2.SignUrlResponse(
            query=domain.signed_query(self._signing_key, record.id, expires),
            expire_time=Timestamp(seconds=expires),
        )

    async def VerifyUrl(
        self, request: assets_pb2.VerifyUrlRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.Asset:
        domain.verify_signed_query(self._signing_key, request.id, request.query, utcnow())
        return _asset(await self._catalog.get_signed(request.id))


async def _header(
    requests: AsyncIterator[assets_pb2.UploadAssetRequest],
) -> assets_pb2.UploadHeader:
    first = await anext(requests, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise InvalidArgument(
            "PARAMETER_MISSING", "the first message must carry the upload header", param="header"
        )
    return first.header


# A refused upload's remaining bytes are read (and dropped) up to this much, so the client gets
# the refusal as the answer: gRPC turns a write racing an early answer into INTERNAL.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


async def _drain(requests: AsyncIterator[assets_pb2.UploadAssetRequest]) -> None:
    drained = 0
    async for request in requests:
        drained += len(request.chunk)
        if drained > _DRAIN_LIMIT_BYTES:
            return


async def _chunks(requests: AsyncIterator[assets_pb2.UploadAssetRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("payload") != "chunk":
            raise InvalidArgument(
                "PARAMETER_INVALID", "only the first message may carry a header", param="header"
            )
        yield request.chunk


def _asset(record: AssetRecord) -> assets_pb2.Asset:
    return assets_pb2.Asset(
        id=record.id,
        account_id=record.account_id,
        kind=_KINDS[record.kind],
        content_type=record.content_type,
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        width=record.width,
        height=record.height,
        duration_seconds=record.duration_seconds,
        origin=_ORIGINS[record.origin],
        job_id=record.job_id or "",
        livemode=record.livemode,
        create_time=to_timestamp(record.created_at),
    )


async def open_blob_store(settings: AssetsSettings, data_dir: Path) -> BlobStore:
    """The store the settings choose; uploads are staged under the blob folder either way."""
    root = settings.blob_dir or data_dir / "blobs"
    if settings.blob_store == "s3":
        return await S3BlobStore.connect(settings, root / "tmp")
    return LocalBlobStore(root)


class AssetsService:
    name = "assets"

    def __init__(self, mesh: Mesh, settings: AssetsSettings) -> None:
        self.settings = settings
        self._mesh = mesh
        self._engine: AsyncEngine | None = None
        self._forgetting: asyncio.Task[None] | None = None

    async def start(self) -> Sequence[ServiceBinding]:
        mesh_settings = self._mesh.settings
        blobs = await open_blob_store(self.settings, mesh_settings.data_dir)  # fails fast
        self._engine = await open_database(
            mesh_settings, self.settings, self.name, "magicpixels.services.assets.migrations"
        )
        signing_key = secret_value(
            self.settings.url_signing_key, mesh_settings.data_dir, "assets_url_signing_key"
        )
        forgetting = idempotency.keep_forgetting(self._engine, store.idempotency_keys)
        self._forgetting = asyncio.create_task(forgetting)
        servicer = AssetsServicer(Catalog(self._engine, blobs), signing_key.encode())
        add_to_server = assets_pb2_grpc.add_AssetsServiceServicer_to_server
        return [ServiceBinding(SERVICE_NAME, servicer, add_to_server)]

    async def close(self) -> None:
        await eventloop.stopped(self._forgetting)
        if self._engine is not None:
            await self._engine.dispose()
