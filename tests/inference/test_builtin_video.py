"""Built-in image to video: H.264 in MP4 at the requested size, fps and length, filmed from the
input image, with the audio input as its AAC soundtrack."""

import numpy as np
import pytest

from magicpixels.services.inference.builtin_audio import generate_audio
from magicpixels.services.inference.builtin_image import generate_image
from magicpixels.services.inference.builtin_video import animate_image
from magicpixels.services.inference.encoding import SAMPLE_RATE
from magicpixels.services.inference.media import InvalidRequest, cover, open_input_image
from tests.inference.probe import decode_audio, decode_video, distance

WIDTH, HEIGHT = 128, 96


@pytest.fixture(scope="module")
def picture() -> bytes:
    return generate_image(prompt="ocean waves at sunset", width=160, height=120, seed=2).data


@pytest.fixture(scope="module")
def song() -> bytes:
    return generate_audio(prompt="happy piano", duration_seconds=1.0, seed=4).data


def _clip(image: bytes, **request) -> bytes:
    fields = {"width": WIDTH, "height": HEIGHT, "seed": 1, "duration_seconds": 2.0, "fps": 12}
    return animate_image(image=image, **(fields | request)).data


@pytest.mark.parametrize(
    ("seconds", "fps", "frames"), [(2.0, 12, 24), (1.5, 10, 15), (1.53, 24, 37)]
)
def test_decodes_to_the_requested_size_fps_and_length(picture, seconds, fps, frames):
    media = animate_image(
        image=picture, width=WIDTH, height=HEIGHT, seed=1, duration_seconds=seconds, fps=fps
    )

    video = decode_video(media.data)

    assert media.content_type == "video/mp4"
    assert (video.container.split(",")[0], video.codec, video.pixel_format) == (
        "mov",
        "h264",
        "yuv420p",
    )
    assert (video.width, video.height, video.fps) == (WIDTH, HEIGHT, fps)
    assert len(video.frames) == frames
    assert abs(video.seconds - seconds) <= 0.5 / fps
    assert (media.width, media.height, media.duration_seconds) == (WIDTH, HEIGHT, frames / fps)
    assert video.audio is None


def test_the_audio_input_becomes_an_aac_track_padded_to_the_video(picture, song):
    video = decode_video(_clip(picture, audio=song, duration_seconds=2.0))

    assert video.audio is not None
    assert (video.audio.codec, video.audio.sample_rate, video.audio.channels) == (
        "aac",
        SAMPLE_RATE,
        2,
    )
    assert abs(video.audio.stream_seconds - 2.0) <= 0.01
    # The song lasts one second: what follows is silence.
    start = video.audio.samples[:, SAMPLE_RATE // 10 : SAMPLE_RATE * 9 // 10]
    tail = video.audio.samples[:, SAMPLE_RATE * 11 // 10 :]
    assert np.sqrt((start**2).mean()) > 0.03
    assert np.abs(tail).max() < 0.01


def test_a_longer_audio_input_is_cut_at_the_videos_end(picture):
    long_song = generate_audio(prompt="drums", duration_seconds=3.0, seed=1, output_format="mp3")

    video = decode_video(_clip(picture, audio=long_song.data, duration_seconds=1.0))

    assert video.audio is not None
    assert abs(video.audio.stream_seconds - 1.0) <= 0.01


@pytest.mark.parametrize("with_audio", [False, True])
def test_same_inputs_give_identical_bytes(picture, song, with_audio):
    audio = song if with_audio else None

    assert _clip(picture, audio=audio, seed=3) == _clip(picture, audio=audio, seed=3)


def test_different_seeds_film_differently(picture):
    first = decode_video(_clip(picture, seed=1)).frames
    second = decode_video(_clip(picture, seed=2)).frames

    assert distance(first, second) > 2


def test_the_clip_shows_the_input_fading_in_and_out(picture):
    frames = decode_video(_clip(picture, prompt="still")).frames
    source = np.asarray(cover(open_input_image(picture, "input_asset_id"), WIDTH, HEIGHT))
    other = np.asarray(
        cover(
            open_input_image(
                generate_image(prompt="neon city", width=160, height=120, seed=2).data,
                "input_asset_id",
            ),
            WIDTH,
            HEIGHT,
        )
    )
    middle = frames[len(frames) // 2]

    assert distance(middle, source) < 20
    assert distance(middle, source) < distance(middle, other) / 2
    assert frames[0].mean() < 0.4 * middle.mean()
    assert frames[-1].mean() < 0.4 * middle.mean()


def _shift(earlier: np.ndarray, later: np.ndarray) -> int:
    """How many pixels right the picture moved between two frames (negative: left)."""
    band = slice(HEIGHT // 4, HEIGHT // 2)  # the far layer, above the parallax seam
    first, second = earlier[band].astype(np.float32), later[band].astype(np.float32)
    errors = {
        dx: np.abs(second[:, 20 + dx : WIDTH - 20 + dx] - first[:, 20 : WIDTH - 20]).mean()
        for dx in range(-20, 21)
    }
    return min(errors, key=errors.__getitem__)


@pytest.mark.parametrize(("prompt", "direction"), [("pan left", 1), ("pan right", -1)])
def test_the_prompt_picks_the_camera_move(picture, prompt, direction):
    frames = decode_video(_clip(picture, prompt=prompt, duration_seconds=2.0)).frames

    moved = _shift(frames[6], frames[-7])

    assert moved * direction >= 3


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"output_format": "webm"}, "output_format"),
        ({"fps": 0}, "fps"),
        ({"fps": 61}, "fps"),
        ({"duration_seconds": 0.0}, "duration_seconds"),
        ({"duration_seconds": 30.5}, "duration_seconds"),
        ({"width": 100}, "width"),
        ({"height": 4096}, "height"),
    ],
)
def test_impossible_requests_are_refused(picture, request_, param):
    with pytest.raises(InvalidRequest) as raised:
        _clip(picture, **request_)
    assert raised.value.param == param


def test_unreadable_audio_is_refused_as_such(picture):
    with pytest.raises(InvalidRequest, match="not readable audio") as raised:
        _clip(picture, audio=b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert (raised.value.param, raised.value.reason) == ("audio_asset_id", "INPUT_UNREADABLE")


def test_progress_rises_to_one(picture):
    reported: list[float] = []

    _clip(picture, on_progress=reported.append)

    assert reported == sorted(reported)
    assert len(reported) == len(set(reported)) >= 10
    assert reported[-1] == 1.0


def test_audio_of_the_clip_follows_the_input(picture, song):
    video = decode_video(_clip(picture, audio=song, duration_seconds=1.0))
    original = decode_audio(song).samples

    assert video.audio is not None
    # AAC is lossy and starts late by its priming delay: compare loudness, not samples.
    loudness = float(np.sqrt((video.audio.samples**2).mean()))
    assert loudness == pytest.approx(float(np.sqrt((original**2).mean())), rel=0.2)
