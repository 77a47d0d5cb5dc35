"""Model backends, chosen per mode by configuration. Each turns a resolved job spec and its
input media into encoded media: the built-in generators, or diffusion models (diffusers).
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from magicpixels.core.errors import FailedPrecondition, InvalidArgument
from magicpixels.core.settings import InferenceSettings
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.builtin_audio import generate_audio
from magicpixels.services.inference.builtin_image import generate_image
from magicpixels.services.inference.builtin_restyle import restyle_image
from magicpixels.services.inference.builtin_video import animate_image
from magicpixels.services.inference.inputs import Inputs
from magicpixels.services.inference.media import EncodedMedia, InvalidRequest

if TYPE_CHECKING:
    from magicpixels.services.inference.diffusion import DiffusionModels

ProgressCallback = Callable[[float], None]
Mode = jobs_pb2.JobMode.ValueType

MODES: dict[str, Mode] = {
    name.removeprefix("JOB_MODE_").lower(): value
    for name, value in jobs_pb2.JobMode.items()
    if value != jobs_pb2.JOB_MODE_UNSPECIFIED
}
DEFAULT_BACKEND = "builtin"


def mode_name(mode: Mode) -> str:
    return jobs_pb2.JobMode.Name(mode).removeprefix("JOB_MODE_").lower()


class Backend(Protocol):
    name: str

    def loaded(self, mode: Mode) -> bool:
        """Whether the mode's model is in memory and ready to run."""
        ...

    def warm_up(self) -> None:
        """Loads the models before the first job asks for them (blocking: run it in a thread)."""
        ...

    def generate(
        self, spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
    ) -> EncodedMedia:
        """Runs in a worker thread; `on_progress` takes fractions in (0, 1] and may raise
        `media.Canceled`, which stops the work at the next step and passes through."""
        ...


Backends = Mapping[Mode, Backend]


def backend_for(mode: Mode, backends: Backends) -> Backend:
    try:
        return backends[mode]
    except KeyError:
        raise FailedPrecondition(
            "MODE_UNSUPPORTED", f"no backend runs {jobs_pb2.JobMode.Name(mode)}"
        ) from None


def configure_backends(settings: InferenceSettings) -> dict[Mode, Backend]:
    """The backend of every mode: `settings.backends` names some (mode name -> backend name),
    the others run on the default; one instance per backend serves all its modes."""
    chosen = settings.backends
    unknown = sorted(set(chosen) - set(MODES))
    if unknown:
        raise ValueError(f"MP_INFERENCE_BACKENDS names unknown modes {unknown}; use {list(MODES)}")
    names = {mode: chosen.get(name, DEFAULT_BACKEND) for name, mode in MODES.items()}
    instances = {name: _create_backend(name, settings) for name in sorted(set(names.values()))}
    return {mode: instances[name] for mode, name in names.items()}


def _create_backend(name: str, settings: InferenceSettings) -> Backend:
    try:
        create = BACKEND_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"MP_INFERENCE_BACKENDS names unknown backend {name!r}; use {list(BACKEND_CLASSES)}"
        ) from None
    return create(settings)


@contextmanager
def _request_errors() -> Iterator[None]:
    """A request a generator cannot follow, as the InvalidArgument callers answer with."""
    try:
        yield
    except InvalidRequest as error:
        raise InvalidArgument(error.reason, str(error), param=error.param) from None


# ---------------------------------------------------------------- the built-in backend


Generator = Callable[[jobs_pb2.JobSpec, Inputs, ProgressCallback], EncodedMedia]


@dataclass(frozen=True)
class BuiltinBackend:
    """Deterministic procedural generators: real media, no weights, CPU only."""

    name: str = "builtin"

    def loaded(self, mode: Mode) -> bool:
        return True  # no weights: nothing to load

    def warm_up(self) -> None:
        pass

    def generate(
        self, spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
    ) -> EncodedMedia:
        with _request_errors():
            return _BUILTIN_GENERATORS[spec.mode](spec, inputs, on_progress)


def _text_to_image(
    spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
) -> EncodedMedia:
    return generate_image(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        width=spec.width,
        height=spec.height,
        seed=spec.seed,
        output_format=spec.output_format,
        steps=spec.steps,
        on_progress=on_progress,
    )


def _image_to_image(
    spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
) -> EncodedMedia:
    return restyle_image(
        image=inputs.require_image(),
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        width=spec.width,
        height=spec.height,
        seed=spec.seed,
        strength=_resolved(spec, "strength"),
        output_format=spec.output_format,
        steps=spec.steps,
        on_progress=on_progress,
    )


def _text_to_audio(
    spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
) -> EncodedMedia:
    return generate_audio(
        prompt=spec.prompt,
        duration_seconds=_resolved(spec, "duration_seconds"),
        seed=spec.seed,
        output_format=spec.output_format,
        on_progress=on_progress,
    )


def _image_to_video(
    spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
) -> EncodedMedia:
    return animate_image(
        image=inputs.require_image(),
        audio=inputs.audio,
        prompt=spec.prompt,
        width=spec.width,
        height=spec.height,
        seed=spec.seed,
        duration_seconds=_resolved(spec, "duration_seconds"),
        fps=_resolved(spec, "fps"),
        output_format=spec.output_format,
        on_progress=on_progress,
    )


def _resolved(spec: jobs_pb2.JobSpec, field: str) -> float:
    """A parameter the jobs service always resolves; a spec without it cannot be run."""
    if not spec.HasField(field):
        raise InvalidRequest(
            field, f"{field} is missing: the spec must be resolved", reason="PARAMETER_MISSING"
        )
    value: float = getattr(spec, field)
    return value


_BUILTIN_GENERATORS: dict[Mode, Generator] = {
    jobs_pb2.JOB_MODE_TEXT_TO_IMAGE: _text_to_image,
    jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE: _image_to_image,
    jobs_pb2.JOB_MODE_TEXT_TO_AUDIO: _text_to_audio,
    jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO: _image_to_video,
}

# ---------------------------------------------------------------- the diffusers backend


@dataclass(frozen=True)
class DiffusersBackend:
    """Diffusion models from local folders (`MP_INFERENCE_DIFFUSERS_MODELS`), on CUDA when
    present; needs the `magicpixels[diffusers]` extra."""

    models: "DiffusionModels"
    name: str = "diffusers"

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> "DiffusersBackend":
        used = {mode for mode, backend in settings.backends.items() if backend == cls.name}
        missing = sorted(used - set(settings.diffusers_models))
        if missing:
            raise ValueError(f"MP_INFERENCE_DIFFUSERS_MODELS names no model folder for {missing}")
        # Imported here: torch and diffusers are an optional extra, loaded only when used.
        try:
            from magicpixels.services.inference.diffusion import DiffusionModels
        except ImportError as error:
            raise ValueError(
                f"the diffusers backend needs the magicpixels[diffusers] extra ({error})"
            ) from error

        folders = {mode: settings.diffusers_models[mode] for mode in sorted(used)}
        return cls(DiffusionModels(folders, settings.diffusers_device))

    def loaded(self, mode: Mode) -> bool:
        return self.models.loaded(mode_name(mode))

    def warm_up(self) -> None:
        self.models.load_all()

    def generate(
        self, spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
    ) -> EncodedMedia:
        with _request_errors():
            return self.models.run(spec, inputs.image, inputs.audio, on_progress)


# Test-mode jobs run here whatever backend their mode has: API.md gives test keys the
# deterministic built-in backend at no cost, so a free job never takes a model's GPU.
TEST_MODE_BACKEND: Backend = BuiltinBackend()


def job_backend(job: jobs_pb2.Job, backends: Backends) -> Backend:
    """The backend that runs the job: its mode's when it is live, else the built-in one."""
    return backend_for(job.spec.mode, backends) if job.livemode else TEST_MODE_BACKEND


BACKEND_CLASSES: dict[str, Callable[[InferenceSettings], Backend]] = {
    "builtin": lambda settings: BuiltinBackend(),
    "diffusers": DiffusersBackend.from_settings,
}
