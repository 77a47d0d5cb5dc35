"""Built-in CPU image-to-video: the input image filmed by a moving camera, no model weights.

The clip is one or two shots (a zoom, pan or tilt; the prompt's words pick the first move and
the seed the rest), crossfaded where they meet. The lower part of the picture, taken as
nearer, moves more than the upper part (parallax); the clip fades in from and out to black.
H.264 in MP4, with the audio input, when there is one, as its AAC soundtrack.
"""

import io
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from av.container import OutputContainer
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from PIL import Image

from magicpixels.services.inference.builtin_image import check_size
from magicpixels.services.inference.encoding import (
    BITEXACT,
    SAMPLE_RATE,
    AudioTrack,
    open_output,
)
from magicpixels.services.inference.media import (
    EncodedMedia,
    InvalidRequest,
    Progress,
    cover,
    open_input_image,
)
from magicpixels.services.inference.prompt import hash_text, last_match, prompt_words

VIDEO_FORMATS: dict[str, str] = {"mp4": "video/mp4"}
MAX_VIDEO_SECONDS = 30.0
MAX_FPS = 60

_PROGRESS_TICKS = 50
# The picture is prepared this much larger than the frame, so the closest view stays sharp.
_MAX_ZOOM = 1.35
# The far (upper) layer makes this share of the camera's move; the near one all of it.
_FAR_SHARE = 0.65
_SHOT_MIN_SECONDS = 3.0
_CROSSFADE_SECONDS = 0.8
_FADE_SECONDS = 0.5
_X264_OPTIONS = {**BITEXACT, "preset": "veryfast", "crf": "20"}
# sRGB pictures are BT.709 video, tagged so that players convert them back as they were.
_BT709 = 1
_LIMITED_RANGE = 1
_TO_YUV = {
    "format": "yuv420p",
    "dst_colorspace": Colorspace.ITU709,
    "dst_color_range": ColorRange.MPEG,
    # The same rounding on every CPU, whatever its vector instructions.
    "interpolation": Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT,
    "threads": 1,
}


class View(NamedTuple):
    """A zoom (1: the whole picture) and the view's centre, as fractions of the picture."""

    zoom: float
    x: float
    y: float

    def toward(self, other: "View", amount: float) -> "View":
        pairs = zip(self, other, strict=True)
        return View(*(mine + (theirs - mine) * amount for mine, theirs in pairs))


_MOVE_WORDS: dict[str, str] = {
    **dict.fromkeys(("zoom", "push", "closer", "approach", "into", "dolly"), "zoom_in"),
    **dict.fromkeys(("out", "pull", "reveal", "away", "back"), "zoom_out"),
    "left": "pan_left",
    "right": "pan_right",
    **dict.fromkeys(("up", "rise", "rising", "ascend", "upward"), "tilt_up"),
    **dict.fromkeys(("down", "descend", "falling", "downward"), "tilt_down"),
    **dict.fromkeys(("still", "static", "steady", "calm"), "drift"),
}
_MOVES = ("zoom_in", "zoom_out", "pan_left", "pan_right", "tilt_up", "tilt_down", "drift")


@dataclass(frozen=True)
class Shot:
    start: float  # seconds
    end: float
    first: View
    last: View

    def view_at(self, seconds: float) -> View:
        span = max(self.end - self.start, 1e-9)
        t = min(max((seconds - self.start) / span, 0.0), 1.0)
        return self.first.toward(self.last, t * t * (3 - 2 * t))


def animate_image(
    *,
    image: bytes,
    audio: bytes | None = None,
    prompt: str = "",
    width: int,
    height: int,
    seed: int,
    duration_seconds: float,
    fps: int,
    output_format: str = "mp4",
    on_progress: Callable[[float], None] | None = None,
) -> EncodedMedia:
    check_video_request(output_format, width, height, duration_seconds, fps)
    frames = max(1, round(duration_seconds * fps))
    progress = Progress(_PROGRESS_TICKS, on_progress)
    rng = np.random.default_rng([hash_text(prompt.strip()), seed % 2**64])
    shots = plan_shots(prompt, rng, frames / fps)
    scene = Scene(open_input_image(image, "input_asset_id"), width, height, rng)
    progress.reach(0.05)
    pictures = _film(scene, shots, fps, frames)
    data = encode_mp4(pictures, width, height, fps, frames, audio, progress.part(0.05, 0.98))
    progress.reach(1.0)
    return EncodedMedia(
        data, VIDEO_FORMATS[output_format], width, height, duration_seconds=frames / fps
    )


def encode_mp4(
    pictures: Iterator[Image.Image],
    width: int,
    height: int,
    fps: int,
    frames: int,
    audio: bytes | None,
    on_fraction: Callable[[float], None],
) -> bytes:
    """`frames` pictures as H.264 in MP4, with the audio (any format PyAV reads), cut or padded
    to the same length, as its AAC track."""
    soundtrack = None if audio is None else read_audio(audio, _sample_at(frames, fps))
    with tempfile.TemporaryDirectory(prefix="magicpixels-video-") as folder:
        # The MP4 index goes first (faststart) so that players start before the download ends;
        # FFmpeg rewrites the file for that, which it can only do to a named file.
        path = Path(folder) / "video.mp4"
        with open_output(str(path), "mp4", movflags="+faststart") as container:
            _write_clip(container, pictures, width, height, soundtrack, fps, frames, on_fraction)
        return path.read_bytes()


def check_video_request(
    output_format: str, width: int, height: int, duration_seconds: float, fps: int
) -> None:
    if output_format not in VIDEO_FORMATS:
        raise InvalidRequest(
            "output_format", f"unsupported video format {output_format!r}; use 'mp4'"
        )
    check_size(width, height)
    if not 1 <= fps <= MAX_FPS:
        raise InvalidRequest("fps", f"fps must be between 1 and {MAX_FPS}, got {fps!r}")
    if not (math.isfinite(duration_seconds) and 0 < duration_seconds <= MAX_VIDEO_SECONDS):
        raise InvalidRequest(
            "duration_seconds",
            f"duration_seconds must be above 0 and at most {MAX_VIDEO_SECONDS:g}, "
            f"got {duration_seconds!r}",
        )


def _film(scene: "Scene", shots: list[Shot], fps: int, frames: int) -> Iterator[Image.Image]:
    """The clip's pictures, faded in from black and out to it."""
    fade_frames = max(1, round(min(_FADE_SECONDS, frames / fps / 8) * fps))
    for index in range(frames):
        light = min(1.0, (index + 1) / fade_frames, (frames - index) / fade_frames)
        yield scene.frame(shots, index / fps, light)


def _write_clip(
    container: OutputContainer,
    pictures: Iterator[Image.Image],
    width: int,
    height: int,
    soundtrack: np.ndarray | None,
    fps: int,
    frames: int,
    on_fraction: Callable[[float], None],
) -> None:
    video = _video_stream(container, width, height, fps)
    audio = None if soundtrack is None else AudioTrack(container, "aac")
    for index, picture in enumerate(pictures):
        frame = av.VideoFrame.from_image(picture).reformat(**_TO_YUV)
        frame.pts = index
        container.mux(video.encode(frame))
        if audio is not None and soundtrack is not None:
            # The audio of each frame's time, muxed beside it.
            audio.write(soundtrack[:, _sample_at(index, fps) : _sample_at(index + 1, fps)])
        on_fraction((index + 1) / frames)
    container.mux(video.encode(None))
    if audio is not None:
        audio.close()


def _sample_at(frame: int, fps: int) -> int:
    return frame * SAMPLE_RATE // fps


def _video_stream(
    container: OutputContainer, width: int, height: int, fps: int
) -> av.video.stream.VideoStream:
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    context = video.codec_context
    context.options = dict(_X264_OPTIONS)
    # x264's output depends on its thread count: one thread gives the same bytes everywhere.
    context.thread_count = 1
    context.colorspace = context.color_primaries = context.color_trc = _BT709
    context.color_range = _LIMITED_RANGE
    return video


# ---------------------------------------------------------------- the camera


def plan_shots(prompt: str, rng: np.random.Generator, duration: float) -> list[Shot]:
    seeded = _MOVES[int(rng.integers(len(_MOVES) - 1))]  # any move but drift
    first_move = last_match(prompt_words(prompt), _MOVE_WORDS, seeded)
    focus = (float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.6)))
    if duration < 2 * _SHOT_MIN_SECONDS:
        return [Shot(0.0, duration, *_move(first_move, focus))]
    others = [move for move in _MOVES[:-1] if move != first_move]
    second_move = others[int(rng.integers(len(others)))]
    middle = duration / 2
    overlap = min(_CROSSFADE_SECONDS, duration / 6) / 2
    return [
        Shot(0.0, middle + overlap, *_move(first_move, focus)),
        Shot(middle - overlap, duration, *_move(second_move, focus)),
    ]


def _move(name: str, focus: tuple[float, float]) -> tuple[View, View]:
    """Where a move starts and ends; views stay inside the picture (see Scene._view)."""
    x, y = focus
    reach = 0.5 - 0.5 / 1.25  # how far the centre can travel at zoom 1.25
    moves = {
        "zoom_in": ((1.0, 0.5, 0.5), (_MAX_ZOOM, x, y)),
        "zoom_out": ((_MAX_ZOOM, x, y), (1.0, 0.5, 0.5)),
        "pan_left": ((1.25, 0.5 + reach, y), (1.25, 0.5 - reach, y)),
        "pan_right": ((1.25, 0.5 - reach, y), (1.25, 0.5 + reach, y)),
        "tilt_up": ((1.25, x, 0.5 + reach), (1.25, x, 0.5 - reach)),
        "tilt_down": ((1.25, x, 0.5 - reach), (1.25, x, 0.5 + reach)),
        "drift": ((1.04, 0.5, 0.5), (1.1, x, y)),
    }
    first, last = moves[name]
    return View(*first), View(*last)


# ---------------------------------------------------------------- the picture


class Scene:
    """The input picture, ready to be filmed at the output size."""

    def __init__(
        self, picture: Image.Image, width: int, height: int, rng: np.random.Generator
    ) -> None:
        self.width, self.height = width, height
        self.picture = cover(picture, round(width * _MAX_ZOOM), round(height * _MAX_ZOOM))
        horizon = float(rng.uniform(0.5, 0.7)) * height
        rows = np.arange(height, dtype=np.float32)
        ramp = np.clip((rows - horizon) / (0.2 * height) + 0.5, 0.0, 1.0)
        self._near_mask = Image.fromarray(
            np.repeat((ramp * 255).astype(np.uint8)[:, None], width, axis=1), "L"
        )
        self._black = Image.new("RGB", (width, height))

    def frame(self, shots: list[Shot], seconds: float, light: float) -> Image.Image:
        """The picture at that time, `light` (0 to 1) of the way up from black."""
        showing = [shot for shot in shots if shot.start <= seconds <= shot.end]
        picture = self._film(showing[0], seconds)
        if len(showing) > 1:  # the crossfade where two shots meet
            second = showing[1]
            mix = (seconds - second.start) / max(showing[0].end - second.start, 1e-9)
            picture = Image.blend(picture, self._film(second, seconds), mix)
        return picture if light >= 1.0 else Image.blend(self._black, picture, light)

    def _film(self, shot: Shot, seconds: float) -> Image.Image:
        near = shot.view_at(seconds)
        # The far layer keeps closer to the shot's middle view: it seems to move less.
        middle = shot.view_at((shot.start + shot.end) / 2)
        far = middle.toward(near, _FAR_SHARE)
        return Image.composite(self._view(*near), self._view(*far), self._near_mask)

    def _view(self, zoom: float, x: float, y: float) -> Image.Image:
        zoom = min(max(zoom, 1.0), _MAX_ZOOM)
        half = 0.5 / zoom
        x, y = min(max(x, half), 1 - half), min(max(y, half), 1 - half)
        source_width, source_height = self.picture.size
        scale_x = source_width / zoom / self.width
        scale_y = source_height / zoom / self.height
        left = (x - half) * source_width
        top = (y - half) * source_height
        return self.picture.transform(
            (self.width, self.height),
            Image.Transform.AFFINE,
            (scale_x, 0.0, left, 0.0, scale_y, top),
            resample=Image.Resampling.BILINEAR,
        )


# ---------------------------------------------------------------- the soundtrack


def read_audio(data: bytes, samples: int) -> np.ndarray:
    """The first `samples` of the audio as (2, samples) float32 at SAMPLE_RATE, silence-padded."""
    track = np.zeros((2, samples), dtype=np.float32)
    filled = 0
    try:
        for block in _decoded_audio(data):
            taken = block[:, : samples - filled]
            track[:, filled : filled + taken.shape[1]] = taken
            filled += taken.shape[1]
            if filled == samples:
                break
    except (av.FFmpegError, IndexError):
        raise InvalidRequest(
            "audio_asset_id", "audio_asset_id is not readable audio", reason="INPUT_UNREADABLE"
        ) from None
    return track


def _decoded_audio(data: bytes) -> Iterator[np.ndarray]:
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=SAMPLE_RATE)
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(container.streams.audio[0]):
            for block in resampler.resample(frame):
                yield block.to_ndarray()
        for block in resampler.resample(None):
            yield block.to_ndarray()
