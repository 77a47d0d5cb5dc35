"""The input media a spec names, read from the assets service for the job's owner."""

from collections.abc import Callable
from dataclasses import dataclass

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.core.errors import InvalidArgument
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.media import InvalidRequest


@dataclass(frozen=True)
class Inputs:
    """The encoded bytes of the input assets, as they were uploaded."""

    image: bytes | None = None
    audio: bytes | None = None

    def require_image(self) -> bytes:
        if self.image is None:
            raise InvalidRequest(
                "input_asset_id",
                "input_asset_id is required: this mode starts from an image",
                reason="PARAMETER_MISSING",
            )
        return self.image


async def fetch_inputs(
    assets: Callable[[], assets_pb2_grpc.AssetsServiceStub],
    spec: jobs_pb2.JobSpec,
    account_id: str,
) -> Inputs:
    """Reads the assets the spec names; a failed read raises the assets service's error.

    `assets` is asked for a stub only when there is something to read.
    """
    image, audio = None, None
    if spec.input_asset_id:
        image = await _read(assets(), spec.input_asset_id, account_id, _IMAGE)
    if spec.audio_asset_id:
        audio = await _read(assets(), spec.audio_asset_id, account_id, _AUDIO)
    return Inputs(image=image, audio=audio)


@dataclass(frozen=True)
class _Expected:
    field: str
    kind: "assets_pb2.AssetKind.ValueType"
    noun: str


_IMAGE = _Expected("input_asset_id", assets_pb2.ASSET_KIND_IMAGE, "an image")
_AUDIO = _Expected("audio_asset_id", assets_pb2.ASSET_KIND_AUDIO, "an audio")


async def _read(
    assets: assets_pb2_grpc.AssetsServiceStub, asset_id: str, account_id: str, expected: _Expected
) -> bytes:
    request = assets_pb2.ReadAssetRequest(id=asset_id, account_id=account_id)
    replies = [reply async for reply in assets.ReadAsset(request)]
    # The stream is read to its end even for the wrong kind: the jobs service checks kinds
    # before a job exists, so only a direct Generate call can name one.
    if replies[0].asset.kind != expected.kind:
        raise InvalidArgument(
            "ASSET_KIND_MISMATCH",
            f"{expected.field} must name {expected.noun} asset",
            param=expected.field,
        )
    return b"".join(reply.chunk for reply in replies[1:])
