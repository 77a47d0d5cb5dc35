"""The assets a job takes as inputs, described by the assets service for the job's owner."""

import asyncio

import grpc

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.core.errors import NotFound
from magicpixels.core.service import Mesh
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs.domain import InputAsset, Inputs, named_assets

_KINDS = {
    assets_pb2.ASSET_KIND_IMAGE: "image",
    assets_pb2.ASSET_KIND_AUDIO: "audio",
    assets_pb2.ASSET_KIND_VIDEO: "video",
}


class InputLookup:
    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    async def describe(self, account_id: str, livemode: bool, spec: jobs_pb2.JobSpec) -> Inputs:
        """Each asset the spec names, which must be the owner's and of the key's mode.

        An asset of another account, or of the other mode (test or live), is NOT_FOUND, as a
        missing one is: no key learns what it may not read.
        """
        named = named_assets(spec)
        if not named:
            return {}
        assets = self._mesh.stub("assets", assets_pb2_grpc.AssetsServiceStub)
        found = await asyncio.gather(
            *(
                _owned(assets, account_id, livemode, field, asset_id)
                for field, asset_id in named.items()
            )
        )
        return {field: _described(asset) for field, asset in zip(named, found, strict=True)}


async def _owned(
    assets: assets_pb2_grpc.AssetsServiceStub,
    account_id: str,
    livemode: bool,
    field: str,
    asset_id: str,
) -> assets_pb2.Asset:
    """The account's asset of the key's mode; NOT_FOUND names the field that named it (the
    assets service's own NOT_FOUND knows no field)."""
    not_found = NotFound("ASSET_NOT_FOUND", f"no asset {asset_id}", param=field)
    try:
        asset: assets_pb2.Asset = await assets.GetAsset(
            assets_pb2.GetAssetRequest(id=asset_id, account_id=account_id)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise not_found from None
        raise
    if asset.livemode != livemode:
        raise not_found
    return asset


def _described(asset: assets_pb2.Asset) -> InputAsset:
    return InputAsset(
        kind=_KINDS.get(asset.kind, "unknown"),
        width=asset.width if asset.HasField("width") else None,
        height=asset.height if asset.HasField("height") else None,
        duration_seconds=asset.duration_seconds if asset.HasField("duration_seconds") else None,
    )
