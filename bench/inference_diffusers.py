"""Time and peak memory of the diffusers backend's modes, on tiny randomly initialised pipelines.

Builds the pipelines the tests use (tests/inference/tiny_diffusers.py) in a temporary folder,
loads them as the backend does (local folder, CUDA in fp16 when present, else the CPU), then
for each mode and size runs once to warm up and N times timed. Prints the device, each
pipeline's load time, the median and best time per mode, and the peak memory: on CUDA the
most the torch allocator held during the mode's runs, on the CPU the process's peak RSS so far.

The models are tiny, so the figures measure the backend's own cost around the model (loading,
scheduling, per-step callbacks, VAE decoding, encoding), not a real model's.

    PYTHONPATH=. .venv/bin/python bench/inference_diffusers.py [--repeat 5] [--size 64 256]

(PYTHONPATH=. for the tiny pipelines' builder, which lives with the tests.)
"""

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import diffusers
import torch
import transformers

from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.inference.builtin_image import generate_image
from magicpixels.services.inference.diffusion import DiffusionModels
from tests.inference.tiny_diffusers import build_all

PROMPT = "a misty mountain landscape at sunset, cinematic"
MODES = ("text_to_image", "image_to_image", "image_to_video", "text_to_audio")


def spec_for(mode: str, size: int, steps: int) -> jobs_pb2.JobSpec:
    common = {"mode": jobs_pb2.JobMode.Value(f"JOB_MODE_{mode.upper()}"), "seed": 1}
    if mode == "text_to_audio":
        return jobs_pb2.JobSpec(
            **common, prompt=PROMPT, duration_seconds=10.0, steps=steps, output_format="wav"
        )
    if mode == "image_to_video":
        return jobs_pb2.JobSpec(
            **common,
            width=size,
            height=size,
            steps=steps,
            guidance_scale=3.0,
            duration_seconds=2.0,
            fps=8,
            output_format="mp4",
        )
    return jobs_pb2.JobSpec(
        **common,
        prompt=PROMPT,
        width=size,
        height=size,
        steps=steps,
        guidance_scale=7.5,
        strength=0.6,
        output_format="png",
    )


def describe(spec: jobs_pb2.JobSpec, mode: str) -> str:
    if mode == "text_to_audio":
        return f"{mode} {spec.duration_seconds:g} s wav, {spec.steps} steps"
    size = f"{spec.width}x{spec.height}"
    if mode == "image_to_video":
        frames = round(spec.duration_seconds * spec.fps)
        return f"{mode} {size} {frames} frames mp4, {spec.steps} steps"
    return f"{mode} {size} png, {spec.steps} steps"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    run()  # warm-up: first-call allocations, kernel selection
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tiny-diffusers-") as root:
        models = DiffusionModels(build_all(Path(root)), args.device)
        device = models.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        print(
            f"device {device} ({name or platform.machine()}), {models.dtype}; "
            f"python {sys.version.split()[0]}, torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, transformers {transformers.__version__}"
        )
        start = time.perf_counter()
        models.load_all()
        print(f"load {len(models.folders)} pipelines: {time.perf_counter() - start:.2f} s")
        for size in args.size:
            picture = generate_image(prompt=PROMPT, width=size, height=size, seed=1).data
            for mode in MODES:
                if mode == "text_to_audio" and size != args.size[0]:
                    continue  # audio has no size
                spec = spec_for(mode, size, args.steps)
                image = picture if mode in ("image_to_image", "image_to_video") else None
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = timed(
                    lambda spec=spec, image=image: models.run(spec, image, None, _ignore),
                    args.repeat,
                )
                print(
                    f"{describe(spec, mode):<48} median {statistics.median(seconds) * 1000:8.1f} ms"
                    f"  best {min(seconds) * 1000:8.1f} ms  peak {peak_memory_mb(device):8.1f} MB"
                )


def _ignore(fraction: float) -> None:
    """Progress goes unheard here."""


if __name__ == "__main__":
    main()
