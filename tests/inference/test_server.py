"""Generate streams progress, then the result's metadata, then bytes that decode to the image;
ListModels says what is loaded."""

import io

from PIL import Image

from magicpixels.core.service import Mesh
from magicpixels.core.settings import InferenceSettings
from magicpixels.inference.v1 import inference_pb2, inference_pb2_grpc
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.server import InferenceService
from tests.support import channel_to, serving


async def test_generate_streams_progress_then_the_image(mesh: Mesh) -> None:
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
    kinds = [reply.WhichOneof("payload") for reply in replies]
    first_result = kinds.index("result")
    assert set(kinds[:first_result]) == {"progress"}
    assert set(kinds[first_result + 1 :]) == {"chunk"}
    fractions = [reply.progress.fraction for reply in replies[:first_result]]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    data = b"".join(reply.chunk for reply in replies[first_result + 1 :])
    result = replies[first_result].result
    assert (result.content_type, result.size_bytes) == ("image/webp", len(data))
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("WEBP", (256, 192))


async def test_list_models_reports_the_builtin_text_to_image(mesh: Mesh) -> None:
    async with (
        serving(InferenceService(mesh, InferenceSettings(workers=0)), mesh) as server,
        channel_to(server, mesh) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = await stub.ListModels(inference_pb2.ListModelsRequest())
    assert [(m.mode, m.backend, m.loaded) for m in reply.models] == [
        (jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, "builtin", True)
    ]
