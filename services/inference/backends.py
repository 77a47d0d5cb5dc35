"""Model backends, chosen per mode. Each turns a resolved job spec into encoded media.

Only the built-in backend exists so far, and only for text to image; the other modes and the
diffusers backend plug in here.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from magicpixels.core.errors import FailedPrecondition
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.builtin_image import EncodedMedia, generate_image

ProgressCallback = Callable[[float], None]


class Backend(Protocol):
    name: str
    modes: tuple["jobs_pb2.JobMode.ValueType", ...]

    def generate(self, spec: jobs_pb2.JobSpec, on_progress: ProgressCallback) -> EncodedMedia:
        """Runs in a worker thread; `on_progress` takes fractions in (0, 1]."""
        ...


@dataclass(frozen=True)
class BuiltinBackend:
    """Deterministic procedural generators: real media, no weights, CPU only."""

    name: str = "builtin"
    modes: tuple["jobs_pb2.JobMode.ValueType", ...] = (jobs_pb2.JOB_MODE_TEXT_TO_IMAGE,)

    def generate(self, spec: jobs_pb2.JobSpec, on_progress: ProgressCallback) -> EncodedMedia:
        if spec.mode != jobs_pb2.JOB_MODE_TEXT_TO_IMAGE:
            raise FailedPrecondition(
                "MODE_UNSUPPORTED",
                f"the builtin backend cannot run {jobs_pb2.JobMode.Name(spec.mode)}",
            )
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


def backend_for(mode: "jobs_pb2.JobMode.ValueType", backends: list[Backend]) -> Backend:
    for backend in backends:
        if mode in backend.modes:
            return backend
    raise FailedPrecondition("MODE_UNSUPPORTED", f"no backend runs {jobs_pb2.JobMode.Name(mode)}")
