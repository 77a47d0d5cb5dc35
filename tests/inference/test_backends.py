"""Backends chosen per mode by configuration, and the built-in backend's answers to specs it
cannot run: each a clear InvalidArgument naming the field."""

import sys

import pytest

from magicpixels.core.errors import FailedPrecondition, InvalidArgument
from magicpixels.core.settings import InferenceSettings
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.backends import (
    MODES,
    TEST_MODE_BACKEND,
    BuiltinBackend,
    backend_for,
    configure_backends,
    job_backend,
    mode_name,
)
from magicpixels.services.inference.builtin_audio import generate_audio
from magicpixels.services.inference.inputs import Inputs
from tests.inference.probe import decode_audio


def _ignore(fraction: float) -> None:
    """A progress callback for calls whose progress is not under test."""


def test_every_mode_runs_on_builtin_by_default():
    backends = configure_backends(InferenceSettings())

    assert {mode_name(mode): backend.name for mode, backend in backends.items()} == {
        "text_to_image": "builtin",
        "image_to_image": "builtin",
        "text_to_audio": "builtin",
        "image_to_video": "builtin",
    }
    assert len({id(backend) for backend in backends.values()}) == 1


def test_the_environment_names_a_backend_per_mode(monkeypatch):
    monkeypatch.setenv("MP_INFERENCE_BACKENDS", '{"text_to_audio": "builtin"}')

    settings = InferenceSettings()

    assert settings.backends == {"text_to_audio": "builtin"}
    assert set(configure_backends(settings)) == set(MODES.values())


@pytest.mark.parametrize(
    ("chosen", "message"),
    [
        ({"text_to_music": "builtin"}, "unknown modes \\['text_to_music'\\]"),
        ({"text_to_image": "onnx"}, "unknown backend 'onnx'"),
    ],
)
def test_a_configuration_naming_the_unknown_is_refused(chosen, message):
    with pytest.raises(ValueError, match=message):
        configure_backends(InferenceSettings(backends=chosen))


def test_a_mode_without_a_backend_is_unsupported():
    backends = configure_backends(InferenceSettings())

    with pytest.raises(FailedPrecondition) as raised:
        backend_for(jobs_pb2.JOB_MODE_UNSPECIFIED, backends)
    assert raised.value.reason == "MODE_UNSUPPORTED"


def test_a_test_mode_job_runs_on_the_builtin_backend_whatever_its_modes_backend():
    """API.md: test keys run every mode on the built-in backend, at no cost; a security review
    ran free jobs on the operator's diffusers backend through one."""
    models = BuiltinBackend(name="the operator's model")  # any backend but the test mode's
    backends = {jobs_pb2.JOB_MODE_TEXT_TO_IMAGE: models}
    spec = jobs_pb2.JobSpec(mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE)

    live = job_backend(jobs_pb2.Job(spec=spec, livemode=True), backends)
    test = job_backend(jobs_pb2.Job(spec=spec, livemode=False), backends)

    assert live is models
    assert test is TEST_MODE_BACKEND
    assert test.name == "builtin"


def test_builtin_runs_a_resolved_audio_spec():
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_TEXT_TO_AUDIO,
        prompt="bells",
        seed=3,
        duration_seconds=1.25,
        output_format="flac",
    )

    media = BuiltinBackend().generate(spec, Inputs(), _ignore)

    assert (media.content_type, media.duration_seconds) == ("audio/flac", 1.25)
    assert (
        media.data
        == generate_audio(prompt="bells", duration_seconds=1.25, seed=3, output_format="flac").data
    )
    assert decode_audio(media.data).seconds == 1.25


@pytest.mark.parametrize(
    ("spec", "reason", "param"),
    [
        (
            jobs_pb2.JobSpec(
                mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE,
                prompt="x",
                width=64,
                height=64,
                strength=0.5,
                output_format="png",
            ),
            "PARAMETER_MISSING",
            "input_asset_id",
        ),
        (
            jobs_pb2.JobSpec(mode=jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, prompt="x", output_format="wav"),
            "PARAMETER_MISSING",
            "duration_seconds",
        ),
        (
            jobs_pb2.JobSpec(
                mode=jobs_pb2.JOB_MODE_TEXT_TO_AUDIO,
                prompt="x",
                duration_seconds=1,
                output_format="mp4",
            ),
            "PARAMETER_INVALID",
            "output_format",
        ),
        (
            jobs_pb2.JobSpec(
                mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE,
                prompt="x",
                width=60,
                height=64,
                output_format="png",
            ),
            "PARAMETER_INVALID",
            "width",
        ),
    ],
)
def test_a_spec_builtin_cannot_run_is_an_invalid_argument(spec, reason, param):
    with pytest.raises(InvalidArgument) as raised:
        BuiltinBackend().generate(spec, Inputs(), _ignore)
    assert (raised.value.reason, raised.value.param) == (reason, param)


def test_an_unreadable_input_image_is_an_invalid_argument():
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO,
        width=64,
        height=64,
        duration_seconds=1,
        fps=8,
        output_format="mp4",
    )

    with pytest.raises(InvalidArgument) as raised:
        BuiltinBackend().generate(spec, Inputs(image=b"not an image"), _ignore)
    assert (raised.value.reason, raised.value.param) == ("INPUT_UNREADABLE", "input_asset_id")


def test_the_diffusers_backend_without_its_extra_is_refused_at_start(monkeypatch, tmp_path):
    # As when torch and diffusers are not installed: the module cannot be imported.
    monkeypatch.setitem(sys.modules, "magicpixels.services.inference.diffusion", None)
    settings = InferenceSettings(
        backends={"text_to_image": "diffusers"}, diffusers_models={"text_to_image": tmp_path}
    )

    with pytest.raises(ValueError, match=r"needs the magicpixels\[diffusers\] extra"):
        configure_backends(settings)
