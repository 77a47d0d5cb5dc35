"""The diffusers backend loads tiny randomly initialised pipelines from folders the test writes
(tests/inference/tiny_diffusers.py) and runs every mode on the CPU, end to end: the real loading,
stepping, cancelling and encoding code, on noise instead of a trained model's pictures."""

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicpixels.core.errors import InvalidArgument
from magicpixels.core.service import Mesh
from magicpixels.core.settings import InferenceSettings
from magicpixels.inference.v1 import inference_pb2, inference_pb2_grpc
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.backends import (
    Backend,
    DiffusersBackend,
    configure_backends,
    mode_name,
)
from magicpixels.services.inference.builtin_audio import generate_audio
from magicpixels.services.inference.builtin_image import generate_image
from magicpixels.services.inference.inputs import Inputs
from magicpixels.services.inference.media import Canceled, cover, open_input_image
from magicpixels.services.inference.server import InferenceService
from tests.inference.probe import decode_audio, decode_video, distance, image_pixels
from tests.inference.tiny_diffusers import VIDEO_FRAMES, build_all
from tests.support import channel_to, eventually, serving

# Warnings of the libraries with each other, not of the code under test: transformers' VITS
# model, which diffusers' AutoPipeline imports, uses the torch.jit that torch 2.13 deprecates;
# diffusers' Euler scheduler hands numpy a tensor whose __array__ predates numpy 2's `copy`.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

ALL_ON_DIFFUSERS = dict.fromkeys(
    ("text_to_image", "image_to_image", "image_to_video", "text_to_audio"), "diffusers"
)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("models"))


def diffusers_settings(folders: dict[str, Path], **chosen: str) -> InferenceSettings:
    return InferenceSettings(
        workers=0,
        backends=chosen or ALL_ON_DIFFUSERS,
        diffusers_models=folders,
        diffusers_device="cpu",
    )


@pytest.fixture(scope="module")
def backend(model_folders: dict[str, Path]) -> Backend:
    backends = configure_backends(diffusers_settings(model_folders))
    (only,) = set(backends.values())
    return only


@pytest.fixture(scope="module")
def picture() -> bytes:
    return generate_image(prompt="a red kite over the sea", width=96, height=64, seed=1).data


class Heard:
    """A progress callback that keeps what it hears."""

    def __init__(self) -> None:
        self.fractions: list[float] = []

    def __call__(self, fraction: float) -> None:
        self.fractions.append(fraction)


NO_INPUTS = Inputs()


def run(
    backend: Backend, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS
) -> tuple[bytes, Heard]:
    heard = Heard()
    media = backend.generate(spec, inputs, heard)
    assert heard.fractions == sorted(heard.fractions)
    assert heard.fractions[-1] == 1.0
    return media.data, heard


def image_spec(**fields: object) -> jobs_pb2.JobSpec:
    resolved: dict[str, object] = {
        "mode": jobs_pb2.JOB_MODE_TEXT_TO_IMAGE,
        "prompt": "a lighthouse in a storm",
        "width": 64,
        "height": 64,
        "seed": 7,
        "steps": 3,
        "guidance_scale": 7.5,
        "output_format": "png",
    }
    return jobs_pb2.JobSpec(**(resolved | fields))


def video_spec(**fields: object) -> jobs_pb2.JobSpec:
    resolved: dict[str, object] = {
        "mode": jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO,
        "width": 64,
        "height": 64,
        "seed": 5,
        "steps": 2,
        "guidance_scale": 7.5,
        "duration_seconds": 1.0,
        "fps": 8,
        "output_format": "mp4",
    }
    return jobs_pb2.JobSpec(**(resolved | fields))


def audio_spec(**fields: object) -> jobs_pb2.JobSpec:
    resolved: dict[str, object] = {
        "mode": jobs_pb2.JOB_MODE_TEXT_TO_AUDIO,
        "prompt": "rain on a tin roof",
        "seed": 3,
        "duration_seconds": 1.0,
        "output_format": "wav",
    }
    return jobs_pb2.JobSpec(**(resolved | fields))


# ---------------------------------------------------------------- configuration


def test_each_mode_named_runs_on_diffusers_and_the_rest_on_builtin(model_folders):
    backends = configure_backends(
        diffusers_settings(model_folders, text_to_audio="diffusers", image_to_video="diffusers")
    )

    assert {mode_name(mode): backend.name for mode, backend in backends.items()} == {
        "text_to_image": "builtin",
        "image_to_image": "builtin",
        "text_to_audio": "diffusers",
        "image_to_video": "diffusers",
    }


def test_a_mode_on_diffusers_without_a_model_folder_stops_the_start(model_folders):
    settings = InferenceSettings(
        backends={"text_to_audio": "diffusers"},
        diffusers_models={"text_to_image": model_folders["text_to_image"]},
    )

    with pytest.raises(ValueError, match="no model folder for \\['text_to_audio'\\]"):
        configure_backends(settings)


def test_a_folder_that_holds_no_pipeline_stops_the_start(tmp_path):
    settings = diffusers_settings({"text_to_image": tmp_path}, text_to_image="diffusers")

    with pytest.raises(ValueError, match=r"has no model_index\.json"):
        configure_backends(settings)


def test_a_pipeline_of_another_kind_is_refused_for_a_mode(model_folders):
    settings = diffusers_settings(
        {"text_to_audio": model_folders["text_to_image"]}, text_to_audio="diffusers"
    )
    (backend,) = {configure_backends(settings)[jobs_pb2.JOB_MODE_TEXT_TO_AUDIO]}

    with pytest.raises(ValueError, match="StableDiffusionPipeline, which cannot run"):
        backend.warm_up()


def test_models_load_at_warm_up_and_are_reported_loaded(model_folders):
    backends = configure_backends(diffusers_settings(model_folders))
    (backend,) = set(backends.values())
    assert not any(backend.loaded(mode) for mode in backends)

    backend.warm_up()

    assert all(backend.loaded(mode) for mode in backends)
    assert isinstance(backend, DiffusersBackend)
    image_modes = ("text_to_image", "image_to_image")
    # Both image modes name one folder: the second pipeline shares the first's weights.
    text, restyle = (backend.models._loaded[mode].pipeline for mode in image_modes)
    assert text.unet is restyle.unet


# ---------------------------------------------------------------- the modes


def test_text_to_image_gives_the_size_and_format_asked_with_a_report_per_step(backend):
    data, heard = run(backend, image_spec(width=96, height=64, steps=4, output_format="webp"))

    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("WEBP", (96, 64))
    assert len(heard.fractions) >= 4


def test_text_to_image_is_deterministic_by_seed(backend):
    first, _ = run(backend, image_spec(seed=11))
    again, _ = run(backend, image_spec(seed=11))
    other, _ = run(backend, image_spec(seed=12))

    assert first == again
    assert distance(image_pixels(first), image_pixels(other)) > 1.0


def test_image_to_image_restyles_the_input_at_the_output_size(backend, picture):
    spec = image_spec(mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, strength=0.7, output_format="jpeg")

    data, _ = run(backend, spec, Inputs(image=picture))
    again, _ = run(backend, spec, Inputs(image=picture))

    assert data == again
    assert image_pixels(data).shape == (64, 64, 3)
    source = np.asarray(cover(open_input_image(picture, "input_asset_id"), 64, 64))
    assert distance(image_pixels(data), source) > 1.0


def test_image_to_image_at_strength_zero_gives_the_input_back(backend, picture):
    spec = image_spec(mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, strength=0.0)

    data, _ = run(backend, spec, Inputs(image=picture))

    source = np.asarray(cover(open_input_image(picture, "input_asset_id"), 64, 64))
    assert np.array_equal(image_pixels(data), source)


def test_image_to_image_without_an_input_is_a_clear_refusal(backend):
    spec = image_spec(mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, strength=0.5)

    with pytest.raises(InvalidArgument) as raised:
        backend.generate(spec, Inputs(), Heard())
    assert (raised.value.reason, raised.value.param) == ("PARAMETER_MISSING", "input_asset_id")


def test_image_to_video_gives_the_frames_fps_and_size_asked(backend, picture):
    data, _ = run(backend, video_spec(), Inputs(image=picture))

    video = decode_video(data)
    assert (video.container, video.codec, video.pixel_format) == (
        "mov,mp4,m4a,3gp,3g2,mj2",
        "h264",
        "yuv420p",
    )
    assert (video.width, video.height, video.fps) == (64, 64, 8.0)
    assert len(video.frames) == 8
    assert video.seconds == pytest.approx(1.0, abs=1 / 8)
    assert video.audio is None


def test_a_longer_clip_than_the_model_makes_blends_between_its_frames(backend, picture):
    spec = video_spec(fps=2 * VIDEO_FRAMES, seed=9)

    data, _ = run(backend, spec, Inputs(image=picture))

    video = decode_video(data)
    assert len(video.frames) == 2 * VIDEO_FRAMES
    assert video.fps == 2 * VIDEO_FRAMES


def test_image_to_video_follows_the_seed_and_carries_the_soundtrack(backend, picture):
    song = generate_audio(prompt="calm piano", duration_seconds=2.0, seed=1).data
    inputs = Inputs(image=picture, audio=song)

    data, _ = run(backend, video_spec(seed=21), inputs)
    again, _ = run(backend, video_spec(seed=21), inputs)
    other, _ = run(backend, video_spec(seed=22), inputs)

    # The model makes the same frames; x264 is not always byte-stable in a process that has
    # torch loaded (its encoding decisions can differ), so the frames are compared decoded.
    frames, frames_again, frames_other = (decode_video(v).frames for v in (data, again, other))
    assert distance(frames, frames_again) < 1.0
    assert distance(frames, frames_other) > 10.0
    video = decode_video(data)
    assert video.audio is not None
    assert (video.audio.codec, video.audio.channels) == ("aac", 2)
    assert video.audio.stream_seconds == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("output_format", "codec"), [("wav", "pcm_s16le"), ("mp3", "mp3"), ("ogg", "opus")]
)
def test_text_to_audio_lasts_exactly_the_duration_asked(backend, output_format, codec):
    data, heard = run(backend, audio_spec(duration_seconds=1.5, output_format=output_format))

    audio = decode_audio(data)
    assert audio.codec.startswith(codec)
    assert (audio.sample_rate, audio.channels) == (48_000, 2)
    assert audio.stream_seconds == pytest.approx(1.5, abs=0.01)
    if output_format == "wav":
        assert audio.samples.shape[1] == 72_000
    assert len(heard.fractions) >= 10  # a report per step: AudioLDM takes 10 by default


def test_text_to_audio_is_deterministic_by_seed(backend):
    first, _ = run(backend, audio_spec(seed=4, steps=3))
    again, _ = run(backend, audio_spec(seed=4, steps=3))
    other, _ = run(backend, audio_spec(seed=5, steps=3))

    assert first == again
    assert distance(decode_audio(first).samples, decode_audio(other).samples) > 0


# ---------------------------------------------------------------- cancellation


def canceling_after(reports: int) -> Callable[[float], None]:
    heard: list[float] = []

    def report(fraction: float) -> None:
        heard.append(fraction)
        if len(heard) >= reports:
            raise Canceled("stop")

    report.heard = heard  # type: ignore[attr-defined]
    return report


@pytest.mark.parametrize(
    ("spec", "with_image"),
    [
        (image_spec(steps=10), False),
        (image_spec(mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, steps=10, strength=1.0), True),
        (video_spec(steps=10), True),
        (audio_spec(steps=10), False),
    ],
    ids=["text_to_image", "image_to_image", "image_to_video", "text_to_audio"],
)
def test_a_cancel_stops_the_run_at_the_next_step(backend, picture, spec, with_image):
    inputs = Inputs(image=picture if with_image else None)
    report = canceling_after(2)

    with pytest.raises(Canceled):
        backend.generate(spec, inputs, report)

    assert report.heard == pytest.approx([0.09, 0.18])  # two of ten steps, and no more
    # The pipeline is free again: the next job runs in full.
    spec.steps = 2
    run(backend, spec, inputs)


# ---------------------------------------------------------------- through the service


async def test_the_service_warms_up_then_streams_a_diffusers_image(mesh: Mesh, model_folders):
    settings = diffusers_settings(model_folders, text_to_image="diffusers")
    async with (
        serving(InferenceService(mesh, settings), mesh) as server,
        channel_to(server, mesh) as channel,
    ):
        inference = inference_pb2_grpc.InferenceServiceStub(channel)

        async def loaded() -> bool:
            listed = await inference.ListModels(inference_pb2.ListModelsRequest())
            return {model.id: model.loaded for model in listed.models}["diffusers/text_to_image"]

        await eventually(loaded)
        request = inference_pb2.GenerateRequest(spec=image_spec(steps=4), account_id="acct_a")
        replies = [reply async for reply in inference.Generate(request)]

    fractions = [reply.progress.fraction for reply in replies if reply.HasField("progress")]
    assert fractions == pytest.approx([0.225, 0.45, 0.675, 0.9, 1.0])
    (result,) = [reply.result for reply in replies if reply.HasField("result")]
    assert (result.content_type, result.width, result.height) == ("image/png", 64, 64)
    data = b"".join(reply.chunk for reply in replies)
    assert data == run(backend_of(settings), image_spec(steps=4))[0]


def backend_of(settings: InferenceSettings) -> Backend:
    return configure_backends(settings)[jobs_pb2.JOB_MODE_TEXT_TO_IMAGE]
