"""Upload and download throughput through the gateway, and the memory a large upload costs.

Runs every service as its own process (`magicpixels serve <svc>`, as job_latency.py does) on a
fresh data folder with the local blob store, signs up, then:

- peak RSS: resets the peak resident memory of the gateway and assets processes (writing 5 to
  /proc/<pid>/clear_refs), uploads a ~50 MiB WAV, and prints how far each peak (VmHWM) rose
  above the memory each process held before;
- upload: POSTs a ~20 MiB PNG of noise (as the raw body, then as multipart/form-data) N times
  and prints MiB/s from the median time of a request, which includes decoding the image;
- download: GETs that asset's content N times (owner's key, then a signed URL), MiB/s likewise.

    .venv/bin/python bench/assets.py [--runs 5]
"""

import argparse
import io
import random
import statistics
import time
import wave
from collections.abc import Callable
from pathlib import Path

import httpx
from job_latency import serve_mesh  # bench/ is this script's path
from PIL import Image

MIB = 1024 * 1024
IMAGE_LIMIT = 20 * MIB
AUDIO_LIMIT = 50 * MIB
TARGETS = {"upload": 100.0, "download": 200.0, "peak": 16.0}


def noise_png(limit: int) -> bytes:
    """Random RGB pixels, which PNG cannot compress: as large as fits under the limit."""
    width = 2560
    height = (limit - 64 * 1024) // (width * 3 + 1)
    pixels = random.Random(1).randbytes(width * height * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def noise_wav(limit: int) -> bytes:
    """48 kHz 16-bit stereo noise (about 4.5 minutes), as large as fits under the limit."""
    frames = (limit - 1024) // 4
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(2)
        audio.setsampwidth(2)
        audio.setframerate(48_000)
        audio.writeframes(random.Random(2).randbytes(frames * 4))
    return buffer.getvalue()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def peak_rise_mib(pids: dict[str, int], action: Callable[[], None]) -> dict[str, float]:
    """How far each process's peak resident memory rose above its resident memory before."""
    before = {name: status_kib(pid, "VmRSS") for name, pid in pids.items()}
    for pid in pids.values():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak restarts from now
    action()
    return {name: (status_kib(pid, "VmHWM") - before[name]) / 1024 for name, pid in pids.items()}


def upload(client: httpx.Client, headers: dict[str, str], data: bytes, form: bool) -> str:
    if form:
        files = {"file": ("upload", data, headers["Content-Type"])}
        auth = {"Authorization": headers["Authorization"]}
        response = client.post("/v1/assets", files=files, headers=auth)
    else:
        response = client.post("/v1/assets", content=data, headers=headers)
    if response.status_code != 201:
        raise SystemExit(f"upload failed: {response.status_code} {response.text}")
    asset_id: str = response.json()["id"]
    return asset_id


def download(client: httpx.Client, url: str, headers: dict[str, str]) -> int:
    size = 0
    with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            size += len(chunk)
    return size


def mib_per_second(size: int, runs: int, once: Callable[[], object]) -> float:
    once()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return size / MIB / statistics.median(times)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return f"(target {'>=' if higher_is_better else '<='} {target:g}: {'met' if met else 'MISSED'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    image, audio = noise_png(IMAGE_LIMIT), noise_wav(AUDIO_LIMIT)
    with serve_mesh(timeout=120) as served:
        pids = {name: served.processes[name].pid for name in ("gateway", "assets")}
        run(served.client, args.runs, image, audio, pids)


def run(client: httpx.Client, runs: int, image: bytes, audio: bytes, pids: dict[str, int]) -> None:
    signup = client.post("/v1/accounts", json={"email": "bench@example.com"}).json()
    auth = {"Authorization": f"Bearer {signup['api_key']['token']}"}
    png, wav = {**auth, "Content-Type": "image/png"}, {**auth, "Content-Type": "audio/wav"}
    upload(client, png, noise_png(MIB), form=False)  # imports and pools warmed up
    upload(client, wav, noise_wav(MIB), form=True)

    print(f"peak RSS rise during a {len(audio) / MIB:.1f} MiB WAV upload:")
    for form in (False, True):
        rises = peak_rise_mib(pids, lambda form=form: upload(client, wav, audio, form))
        for name, rise in rises.items():
            framing = "multipart" if form else "raw"
            target = verdict(rise, TARGETS["peak"], higher_is_better=False)
            print(f"  {framing:<9} {name:<8} +{rise:5.1f} MiB {target}")

    print(f"a {len(image) / MIB:.1f} MiB PNG through the gateway, median of {runs}:")
    for form in (False, True):
        rate = mib_per_second(len(image), runs, lambda form=form: upload(client, png, image, form))
        framing = "multipart" if form else "raw body"
        print(f"  upload ({framing})     {rate:6.1f} MiB/s {verdict(rate, TARGETS['upload'])}")
    asset_id = upload(client, png, image, form=False)
    content = f"/v1/assets/{asset_id}/content"
    signed = client.post(f"/v1/assets/{asset_id}/url", headers=auth).json()["url"]
    for name, url, headers in (("owner's key", content, auth), ("signed URL", signed, {})):
        rate = mib_per_second(
            len(image), runs, lambda url=url, headers=headers: download(client, url, headers)
        )
        print(f"  download ({name})  {rate:6.1f} MiB/s {verdict(rate, TARGETS['download'])}")


if __name__ == "__main__":
    main()
