"""Diffusion models run by Hugging Face diffusers, each mode's loaded from a local folder.

A folder is what `save_pretrained` writes (or a Hub snapshot): `model_index.json` beside one
folder per component. Nothing is ever downloaded: every load is `local_files_only`. The models
run on CUDA in half precision when there is a GPU (or where `device` says), else on the CPU in
full precision. One run at a time per pipeline: a scheduler keeps per-run state.

Which pipelines serve which mode:
- text_to_image: any text-to-image pipeline diffusers' AutoPipeline knows (Stable Diffusion,
  SDXL, ...); image_to_image: its image-to-image sibling, sharing the weights when both modes
  name the same folder.
- image_to_video: Stable Video Diffusion (the picture alone conditions it: prompt and guidance
  do not apply). It makes at most the frames its UNet was trained for (14 or 25); a clip of
  more frames blends between them.
- text_to_audio: AudioLDM or AudioLDM 2; the waveform is resampled to 48 kHz stereo.

This module needs torch and diffusers (the `magicpixels[diffusers]` extra) and none of the
services' plumbing, so that bench/inference_diffusers.py runs it on a bare GPU machine.
"""

import inspect
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.builtin_audio import check_audio_request, encode_audio
from magicpixels.services.inference.builtin_image import check_image_request, encode_image
from magicpixels.services.inference.builtin_video import (
    VIDEO_FORMATS,
    check_video_request,
    encode_mp4,
)
from magicpixels.services.inference.encoding import SAMPLE_RATE, to_track
from magicpixels.services.inference.media import (
    EncodedMedia,
    InvalidRequest,
    cover,
    open_input_image,
)

MODE_NAMES = ("text_to_image", "image_to_image", "image_to_video", "text_to_audio")
# Share of the progress the denoising steps cover (a report per step); decoding and encoding
# take the rest.
_DENOISING = 0.9
# Frames the video VAE decodes at once: its memory grows with them.
_DECODE_CHUNK = 8
_LOADERS: dict[str, Any] = {
    "text_to_image": AutoPipelineForText2Image,
    "image_to_image": AutoPipelineForImage2Image,
    "image_to_video": DiffusionPipeline,
    "text_to_audio": DiffusionPipeline,
}
# The pipelines whose call the generic modes make (by name: importing them all is slow).
_RUNNABLE = {
    "image_to_video": {"StableVideoDiffusionPipeline"},
    "text_to_audio": {"AudioLDMPipeline", "AudioLDM2Pipeline"},
}
_IMAGE_TWINS = {"text_to_image": "image_to_image", "image_to_image": "text_to_image"}


@dataclass
class _Loaded:
    pipeline: Any
    lock: threading.Lock


class DiffusionModels:
    """The pipelines of the modes `folders` names (mode name -> model folder), loaded on first
    use or by `load_all`."""

    def __init__(self, folders: Mapping[str, Path], device: str = "auto") -> None:
        unknown = sorted(set(folders) - set(MODE_NAMES))
        if unknown:
            raise ValueError(f"diffusers models named for unknown modes {unknown}")
        for mode, folder in folders.items():
            if not (Path(folder) / "model_index.json").is_file():
                raise ValueError(f"the {mode} model folder {folder} has no model_index.json")
        self.folders = {mode: Path(folder) for mode, folder in folders.items()}
        self.device = torch.device(_pick_device(device))
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self._loaded: dict[str, _Loaded] = {}
        self._loading = threading.Lock()

    def loaded(self, mode: str) -> bool:
        return mode in self._loaded

    def load_all(self) -> None:
        for mode in self.folders:
            self._pipeline(mode)

    def run(
        self,
        spec: jobs_pb2.JobSpec,
        image: bytes | None,
        audio: bytes | None,
        on_progress: Callable[[float], None],
    ) -> EncodedMedia:
        """Runs in a worker thread; `on_progress` may raise to stop between two steps."""
        mode = jobs_pb2.JobMode.Name(spec.mode).removeprefix("JOB_MODE_").lower()
        if mode not in self.folders:
            raise InvalidRequest("mode", f"no diffusers model is configured for {mode}")
        if mode in ("image_to_image", "image_to_video") and image is None:
            raise InvalidRequest(
                "input_asset_id",
                "input_asset_id is required: this mode starts from an image",
                reason="PARAMETER_MISSING",
            )
        entry = self._pipeline(mode)
        with entry.lock:
            if mode == "text_to_image":
                return self._text_to_image(entry.pipeline, spec, on_progress)
            if mode == "image_to_image":
                return self._image_to_image(entry.pipeline, spec, image or b"", on_progress)
            if mode == "image_to_video":
                return self._image_to_video(entry.pipeline, spec, image or b"", audio, on_progress)
            return self._text_to_audio(entry.pipeline, spec, on_progress)

    # ------------------------------------------------------------ loading

    def _pipeline(self, mode: str) -> _Loaded:
        if mode in self._loaded:  # loaded once, never dropped: no lock to wait on
            return self._loaded[mode]
        with self._loading:
            if mode not in self._loaded:
                self._loaded[mode] = _Loaded(self._load(mode), threading.Lock())
            return self._loaded[mode]

    def _load(self, mode: str) -> Any:
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        folder = self.folders[mode]
        twin = _IMAGE_TWINS.get(mode)
        if twin in self._loaded and self.folders[twin] == folder:
            # Both image modes on one model: the second shares the first's weights.
            pipeline = _LOADERS[mode].from_pipe(self._loaded[twin].pipeline)
        else:
            pipeline = _LOADERS[mode].from_pretrained(
                folder, dtype=self.dtype, local_files_only=True
            )
            pipeline = pipeline.to(self.device)
        if type(pipeline).__name__ not in _RUNNABLE.get(mode, {type(pipeline).__name__}):
            raise ValueError(f"{folder} holds a {type(pipeline).__name__}, which cannot run {mode}")
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    # ------------------------------------------------------------ the modes

    def _text_to_image(
        self, pipeline: Any, spec: jobs_pb2.JobSpec, on_progress: Callable[[float], None]
    ) -> EncodedMedia:
        check_image_request(spec.output_format, spec.width, spec.height)
        return _picture(
            pipeline,
            spec,
            on_progress,
            width=spec.width,
            height=spec.height,
            num_inference_steps=spec.steps,
        )

    def _image_to_image(
        self,
        pipeline: Any,
        spec: jobs_pb2.JobSpec,
        image: bytes,
        on_progress: Callable[[float], None],
    ) -> EncodedMedia:
        check_image_request(spec.output_format, spec.width, spec.height)
        if not 0 <= spec.strength <= 1:
            raise InvalidRequest("strength", f"strength must be in [0, 1], got {spec.strength!r}")
        source = cover(open_input_image(image, "input_asset_id"), spec.width, spec.height)
        if spec.strength == 0:  # no step would run: the input, as asked, is the answer
            media = encode_image(np.asarray(source), spec.output_format)
            on_progress(1.0)
            return media
        return _picture(
            pipeline,
            spec,
            on_progress,
            image=source,
            strength=spec.strength,
            # The pipeline runs steps x strength of them: at least one.
            num_inference_steps=max(spec.steps, math.ceil(1 / spec.strength)),
        )

    def _image_to_video(
        self,
        pipeline: Any,
        spec: jobs_pb2.JobSpec,
        image: bytes,
        audio: bytes | None,
        on_progress: Callable[[float], None],
    ) -> EncodedMedia:
        width, height, fps = spec.width, spec.height, spec.fps
        check_video_request(spec.output_format, width, height, spec.duration_seconds, fps)
        frames = max(1, round(spec.duration_seconds * fps))
        made = min(frames, pipeline.unet.config.num_frames)
        pictures = pipeline(
            image=cover(open_input_image(image, "input_asset_id"), width, height),
            width=width,
            height=height,
            num_frames=made,
            num_inference_steps=spec.steps,
            # The pace it is conditioned on: the frames it makes, spread over the clip.
            fps=max(1, round(made / spec.duration_seconds)),
            decode_chunk_size=_DECODE_CHUNK,
            generator=_generator(spec.seed),
            callback_on_step_end=_step_callback(on_progress),
        ).frames[0]
        data = encode_mp4(_stretch(pictures, frames), width, height, fps, frames, audio, _ignore)
        on_progress(1.0)
        return EncodedMedia(
            data, VIDEO_FORMATS[spec.output_format], width, height, duration_seconds=frames / fps
        )

    def _text_to_audio(
        self, pipeline: Any, spec: jobs_pb2.JobSpec, on_progress: Callable[[float], None]
    ) -> EncodedMedia:
        check_audio_request(spec.output_format, spec.duration_seconds)
        # The API takes no steps for audio; a direct caller may still give them.
        steps = spec.steps if spec.HasField("steps") else _default_steps(pipeline)

        def step_done(step: int, timestep: int, latents: torch.Tensor) -> None:
            on_progress(_DENOISING * (step + 1) / len(pipeline.scheduler.timesteps))

        waveform = pipeline(
            prompt=spec.prompt,
            audio_length_in_s=spec.duration_seconds,
            num_inference_steps=steps,
            generator=_generator(spec.seed),
            callback=step_done,
            callback_steps=1,
        ).audios[0]
        total = round(spec.duration_seconds * SAMPLE_RATE)
        track = _fit(
            to_track(np.clip(waveform, -1, 1), pipeline.vocoder.config.sampling_rate), total
        )
        media = encode_audio([track], total, spec.output_format, _ignore)
        on_progress(1.0)
        return media


def _picture(
    pipeline: Any, spec: jobs_pb2.JobSpec, on_progress: Callable[[float], None], **asked: Any
) -> EncodedMedia:
    """Runs an image pipeline on the spec's prompt and guidance, and encodes its picture."""
    images = pipeline(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt or None,
        guidance_scale=spec.guidance_scale,
        generator=_generator(spec.seed),
        callback_on_step_end=_step_callback(on_progress),
        **asked,
    ).images
    media = encode_image(np.asarray(images[0].convert("RGB")), spec.output_format)
    on_progress(1.0)
    return media


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _generator(seed: int) -> torch.Generator:
    """Noise drawn on the CPU: the same seed gives the same start on any device."""
    return torch.Generator("cpu").manual_seed(seed)


def _step_callback(on_progress: Callable[[float], None]) -> Callable[..., dict[str, Any]]:
    """diffusers' callback_on_step_end: reports each step done; a raise from `on_progress`
    stops the run there."""

    def step_done(
        pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        on_progress(_DENOISING * (step + 1) / pipeline.num_timesteps)
        return tensors

    return step_done


def _ignore(fraction: float) -> None:
    """Encoding is quick beside the steps: its own progress goes unreported."""


def _default_steps(pipeline: Any) -> int:
    """The steps the pipeline takes when not told (AudioLDM 10, AudioLDM 2 200)."""
    default: int = inspect.signature(pipeline.__call__).parameters["num_inference_steps"].default
    return default


def _stretch(pictures: list[Image.Image], frames: int) -> Iterator[Image.Image]:
    """`frames` pictures from fewer: each a blend of the two made nearest its time."""
    if len(pictures) == frames:
        yield from pictures
        return
    last = len(pictures) - 1
    for index in range(frames):
        position = index * last / max(frames - 1, 1)
        before = int(position)
        after = min(before + 1, last)
        yield Image.blend(pictures[before], pictures[after], position - before)


def _fit(track: np.ndarray, total: int) -> np.ndarray:
    """Exactly `total` samples: cut, or padded with silence."""
    fitted = np.zeros((2, total), dtype=np.float32)
    kept = min(total, track.shape[1])
    fitted[:, :kept] = track[:, :kept]
    return fitted
