"""Generate streams progress, then the result's metadata, then bytes that decode to the media,
reading its inputs from a real assets service for the request's account; ListModels says what
runs each mode."""

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from PIL import Image

from magicpixels.assets.v1 import assets_pb2_grpc
from magicpixels.core.errors import remote_error
from magicpixels.core.service import Mesh
from magicpixels.core.settings import AssetsSettings, InferenceSettings
from magicpixels.inference.v1 import inference_pb2, inference_pb2_grpc
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.assets.server import AssetsService
from magicpixels.services.inference.backends import BuiltinBackend, ProgressCallback
from magicpixels.services.inference.builtin_audio import generate_audio
from magicpixels.services.inference.builtin_image import generate_image
from magicpixels.services.inference.inputs import Inputs
from magicpixels.services.inference.media import Canceled, EncodedMedia
from magicpixels.services.inference.server import InferenceService
from tests.inference.probe import decode_audio, decode_video, image_pixels
from tests.inference.uploads import upload
from tests.support import Database, channel_to, serving

OWNER = "acct_owner"


@dataclass(frozen=True)
class Stack:
    inference: inference_pb2_grpc.InferenceServiceStub
    assets: assets_pb2_grpc.AssetsServiceStub
    image_id: str
    audio_id: str


@pytest.fixture
async def stack(database: Database, mesh: Mesh) -> AsyncIterator[Stack]:
    """Assets and inference in one mesh, with an image and a song of OWNER's uploaded."""
    async with (
        serving(AssetsService(mesh, database.settings(AssetsSettings)), mesh) as assets_server,
        serving(InferenceService(mesh, InferenceSettings(workers=0)), mesh) as server,
        channel_to(assets_server, mesh) as assets_channel,
        channel_to(server, mesh) as channel,
    ):
        assets = assets_pb2_grpc.AssetsServiceStub(assets_channel)
        image = generate_image(prompt="red kite over the sea", width=192, height=128, seed=1)
        song = generate_audio(prompt="calm piano", duration_seconds=1.0, seed=1)
        yield Stack(
            inference_pb2_grpc.InferenceServiceStub(channel),
            assets,
            (await upload(assets, image.data, "image/png", OWNER)).id,
            (await upload(assets, song.data, "audio/wav", OWNER)).id,
        )


@dataclass(frozen=True)
class Streamed:
    fractions: list[float]
    result: inference_pb2.GenerateResult
    data: bytes


async def generate(stack: Stack, spec: jobs_pb2.JobSpec, account_id: str = OWNER) -> Streamed:
    request = inference_pb2.GenerateRequest(spec=spec, account_id=account_id)
    replies = [reply async for reply in stack.inference.Generate(request)]
    kinds = [reply.WhichOneof("payload") for reply in replies]
    first_result = kinds.index("result")
    assert set(kinds[:first_result]) == {"progress"}
    assert set(kinds[first_result + 1 :]) == {"chunk"}
    data = b"".join(reply.chunk for reply in replies[first_result + 1 :])
    result = replies[first_result].result
    assert result.size_bytes == len(data)
    fractions = [reply.progress.fraction for reply in replies[:first_result]]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    return Streamed(fractions, result, data)


async def test_text_to_image_needs_no_assets_service(mesh: Mesh) -> None:
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE,
        prompt="a red kite over the sea",
        width=256,
        height=192,
        seed=7,
        steps=4,
        output_format="webp",
    )
    async with (
        serving(InferenceService(mesh, InferenceSettings(workers=0)), mesh) as server,
        channel_to(server, mesh) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        replies = [r async for r in stub.Generate(inference_pb2.GenerateRequest(spec=spec))]
    result = next(reply.result for reply in replies if reply.HasField("result"))
    data = b"".join(reply.chunk for reply in replies)
    assert (result.content_type, result.width, result.height) == ("image/webp", 256, 192)
    assert not result.HasField("duration_seconds")
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("WEBP", (256, 192))


async def test_image_to_image_restyles_the_uploaded_image(stack: Stack) -> None:
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE,
        prompt="golden forest",
        input_asset_id=stack.image_id,
        width=192,
        height=128,
        seed=2,
        steps=5,
        strength=0.0,
        output_format="png",
    )

    streamed = await generate(stack, spec)

    original = generate_image(prompt="red kite over the sea", width=192, height=128, seed=1)
    assert (streamed.result.content_type, streamed.result.width, streamed.result.height) == (
        "image/png",
        192,
        128,
    )
    assert (image_pixels(streamed.data) == image_pixels(original.data)).all()
    assert len(streamed.fractions) == 5


async def test_text_to_audio_streams_a_piece_of_the_requested_length(stack: Stack) -> None:
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_TEXT_TO_AUDIO,
        prompt="bells",
        seed=4,
        duration_seconds=1.5,
        output_format="ogg",
    )

    streamed = await generate(stack, spec)

    audio = decode_audio(streamed.data)
    assert (streamed.result.content_type, streamed.result.duration_seconds) == ("audio/ogg", 1.5)
    assert not streamed.result.HasField("width")
    assert (audio.codec, audio.seconds) == ("opus", 1.5)


async def test_image_to_video_films_the_image_with_the_song(stack: Stack) -> None:
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO,
        input_asset_id=stack.image_id,
        audio_asset_id=stack.audio_id,
        width=96,
        height=64,
        seed=3,
        duration_seconds=1.0,
        fps=10,
        output_format="mp4",
    )

    streamed = await generate(stack, spec)

    video = decode_video(streamed.data)
    result = streamed.result
    assert (result.content_type, result.width, result.height, result.duration_seconds) == (
        "video/mp4",
        96,
        64,
        1.0,
    )
    assert (video.width, video.height, len(video.frames)) == (96, 64, 10)
    assert video.audio is not None
    assert video.audio.codec == "aac"


def _video_of(image_id: str, audio_id: str = "") -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO,
        input_asset_id=image_id,
        audio_asset_id=audio_id,
        width=64,
        height=64,
        seed=1,
        duration_seconds=1.0,
        fps=8,
        output_format="mp4",
    )


async def _refusal(stack: Stack, spec: jobs_pb2.JobSpec, account_id: str = OWNER) -> tuple:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(stack, spec, account_id)
    found = remote_error(raised.value)
    return found.code, found.reason, found.metadata.get("param")


async def test_another_accounts_input_is_not_found(stack: Stack) -> None:
    refusal = await _refusal(stack, _video_of(stack.image_id), account_id="acct_other")

    assert refusal[:2] == (grpc.StatusCode.NOT_FOUND, "ASSET_NOT_FOUND")


async def test_an_input_of_the_wrong_kind_is_refused(stack: Stack) -> None:
    refusal = await _refusal(stack, _video_of(stack.image_id, audio_id=stack.image_id))

    assert refusal == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ASSET_KIND_MISMATCH",
        "audio_asset_id",
    )


async def test_a_missing_input_is_refused(stack: Stack) -> None:
    refusal = await _refusal(stack, _video_of(""))

    assert refusal == (grpc.StatusCode.INVALID_ARGUMENT, "PARAMETER_MISSING", "input_asset_id")


async def test_list_models_reports_each_modes_backend(mesh: Mesh) -> None:
    async with (
        serving(InferenceService(mesh, InferenceSettings(workers=0)), mesh) as server,
        channel_to(server, mesh) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = await stub.ListModels(inference_pb2.ListModelsRequest())
    assert [(m.id, m.mode, m.backend, m.loaded) for m in reply.models] == [
        ("builtin/text_to_image", jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, "builtin", True),
        ("builtin/image_to_image", jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, "builtin", True),
        ("builtin/text_to_audio", jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, "builtin", True),
        ("builtin/image_to_video", jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO, "builtin", True),
    ]


@dataclass(frozen=True)
class EndlessBackend(BuiltinBackend):
    """Reports progress until its progress callback stops it, and notes that it was stopped."""

    stopped: threading.Event = field(default_factory=threading.Event)

    def generate(
        self, spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
    ) -> EncodedMedia:
        try:
            while True:
                on_progress(0.5)
                time.sleep(0.01)
        except Canceled:
            self.stopped.set()
            raise


async def test_a_caller_hanging_up_stops_the_backend_at_its_next_report(mesh: Mesh) -> None:
    service = InferenceService(mesh, InferenceSettings(workers=0))
    backend = EndlessBackend()
    service.backends = dict.fromkeys(service.backends, backend)
    async with serving(service, mesh) as server, channel_to(server, mesh) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        spec = jobs_pb2.JobSpec(mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, prompt="p")
        call = stub.Generate(inference_pb2.GenerateRequest(spec=spec, account_id=OWNER))
        first = await call.read()
        assert first.progress.fraction == 0.5

        call.cancel()

        assert await asyncio.to_thread(backend.stopped.wait, 10)
