"""Time and peak memory of the built-in generators at the API's default sizes, on one core.

Each case runs in a fresh process pinned to one CPU: its inputs are made first (not timed),
then it generates once to warm up and N times timed. Prints the median and best time and the
process's peak RSS (the interpreter, numpy, Pillow and PyAV included, gRPC not).

    .venv/bin/python bench/inference.py [--repeat 5] [--case NAME ...]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

CASES = {
    "text_to_image 1024x1024 png": "text_to_image",
    "image_to_image 1024x1024 png": "image_to_image",
    "text_to_audio 10 s wav": "text_to_audio:wav",
    "text_to_audio 10 s mp3": "text_to_audio:mp3",
    "text_to_audio 10 s ogg": "text_to_audio:ogg",
    "image_to_video 4 s 24 fps 512x512": "image_to_video",
    "image_to_video 4 s 24 fps 512x512 + audio": "image_to_video:audio",
}
PROMPT = "a misty mountain landscape at sunset, cinematic"


def prepare(case: str) -> Callable[[], object]:
    """The generation a case times, with its inputs already made."""
    from magicpixels.services.inference.builtin_audio import generate_audio
    from magicpixels.services.inference.builtin_image import generate_image
    from magicpixels.services.inference.builtin_restyle import restyle_image
    from magicpixels.services.inference.builtin_video import animate_image

    mode, _, variant = case.partition(":")
    if mode == "text_to_image":
        return lambda: generate_image(prompt=PROMPT, width=1024, height=1024, seed=1)
    if mode == "text_to_audio":
        return lambda: generate_audio(
            prompt="upbeat piano with drums", duration_seconds=10, seed=1, output_format=variant
        )
    picture = generate_image(prompt="ocean waves", width=1024, height=1024, seed=2).data
    if mode == "image_to_image":
        return lambda: restyle_image(
            image=picture, prompt=PROMPT, width=1024, height=1024, seed=1, strength=0.6
        )
    song = generate_audio(prompt="calm strings", duration_seconds=4, seed=3).data
    return lambda: animate_image(
        image=picture,
        audio=song if variant == "audio" else None,
        prompt="slow zoom",
        width=512,
        height=512,
        seed=1,
        duration_seconds=4,
        fps=24,
    )


def measure(case: str, repeat: int) -> dict[str, float]:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    generate = prepare(case)
    generate()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        generate()
        times.append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"median": statistics.median(times), "best": min(times), "peak_mib": peak_mib}


def run_case(case: str, repeat: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", CASES[case], "--repeat", str(repeat)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures: dict[str, float] = json.loads(output)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure:
        print(json.dumps(measure(arguments.measure, arguments.repeat)))
        return
    print(f"{'case':<44} {'median s':>9} {'best s':>7} {'peak RSS MiB':>13}")
    for case in arguments.case or CASES:
        figures = run_case(case, arguments.repeat)
        print(
            f"{case:<44} {figures['median']:>9.3f} {figures['best']:>7.3f} "
            f"{figures['peak_mib']:>13.0f}"
        )


if __name__ == "__main__":
    main()
