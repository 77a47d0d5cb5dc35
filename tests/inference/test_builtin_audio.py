"""Built-in text to audio: a piece of exactly the requested length, in each format, that the
prompt's words steer and the seed repeats."""

import math

import numpy as np
import pytest

from magicpixels.services.inference.builtin_audio import (
    AUDIO_FORMATS,
    VOICES,
    Piece,
    compose,
    generate_audio,
    read_music,
)
from magicpixels.services.inference.encoding import SAMPLE_RATE
from magicpixels.services.inference.media import InvalidRequest
from tests.inference.probe import decode_audio, distance

# output format -> (container, decoder)
DECODED_AS = {
    "wav": ("wav", "pcm_s16le"),
    "mp3": ("mp3", "mp3float"),
    "flac": ("flac", "flac"),
    "ogg": ("ogg", "opus"),
}


def _samples(prompt: str, *, seed: int = 1, seconds: float = 2.0) -> np.ndarray:
    media = generate_audio(prompt=prompt, duration_seconds=seconds, seed=seed)
    return decode_audio(media.data).samples


@pytest.mark.parametrize("output_format", sorted(AUDIO_FORMATS))
@pytest.mark.parametrize("seconds", [1.0, 2.37])
def test_each_format_decodes_to_exactly_the_requested_length(output_format, seconds):
    media = generate_audio(
        prompt="upbeat piano groove", duration_seconds=seconds, seed=3, output_format=output_format
    )

    audio = decode_audio(media.data)

    assert media.content_type == AUDIO_FORMATS[output_format]
    assert (audio.container, audio.codec) == DECODED_AS[output_format]
    assert (audio.sample_rate, audio.channels) == (SAMPLE_RATE, 2)
    assert audio.samples.shape[1] == round(seconds * SAMPLE_RATE)
    assert abs(audio.stream_seconds - seconds) <= 0.01
    assert media.duration_seconds == pytest.approx(seconds, abs=1 / SAMPLE_RATE)
    assert (media.width, media.height) == (None, None)


@pytest.mark.parametrize("output_format", sorted(AUDIO_FORMATS))
def test_same_prompt_and_seed_give_identical_bytes(output_format):
    request = {"prompt": "a calm flute melody", "duration_seconds": 1.5, "seed": 9}

    first = generate_audio(output_format=output_format, **request)
    second = generate_audio(output_format=output_format, **request)

    assert first.data == second.data


def test_the_piece_is_audible_unclipped_and_fades_at_both_ends():
    samples = _samples("happy bells and drums", seconds=3.0)

    loudness = float(np.sqrt((samples**2).mean()))
    assert 0.05 < loudness < 0.7
    assert np.abs(samples).max() < 1.0
    assert np.abs(samples[:, :10]).max() < 0.05
    assert np.abs(samples[:, -10:]).max() < 0.01


def test_different_seeds_and_prompts_give_different_pieces():
    base = _samples("a calm flute melody", seed=1)

    assert distance(base, _samples("a calm flute melody", seed=2)) > 0.02
    assert distance(base, _samples("fast techno drums", seed=1)) > 0.02


@pytest.mark.parametrize(
    ("prompt", "tempo", "drums", "scale", "voice"),
    [
        ("a slow calm ambient drone", 66.0, False, (0, 2, 4, 7, 9), None),
        ("energetic techno drums, fast", 148.0, True, None, "synth"),
        ("sad piano in the rain", 72.0, False, (0, 2, 3, 5, 7, 8, 10), "piano"),
        ("happy upbeat guitar", 124.0, True, (0, 2, 4, 5, 7, 9, 11), "pluck"),
    ],
)
def test_prompt_words_set_tempo_drums_scale_and_instrument(prompt, tempo, drums, scale, voice):
    music = read_music(prompt)

    assert (music.tempo, music.drums) == (tempo, drums)
    if scale is not None:
        assert music.scale == scale
    if voice is not None:
        assert music.lead == VOICES[voice]


def test_a_faster_tempo_plays_more_notes():
    def notes_in_ten_seconds(prompt: str) -> int:
        music = read_music(prompt)
        return len(compose(music, np.random.default_rng(1), 10 * SAMPLE_RATE))

    assert notes_in_ten_seconds("fast chase") > 1.5 * notes_in_ten_seconds("slow lullaby")


def test_rendering_in_other_blocks_gives_the_same_samples():
    total = 3 * SAMPLE_RATE
    music = read_music("upbeat dance drums")
    piece = Piece(compose(music, np.random.default_rng(5), total), total)

    whole = piece.render(0, total)
    split = np.concatenate([piece.render(0, 12_345), piece.render(12_345, total)], axis=1)

    np.testing.assert_array_equal(whole, split)


def test_progress_rises_to_one():
    reported: list[float] = []

    generate_audio(prompt="bells", duration_seconds=2.0, seed=1, on_progress=reported.append)

    assert reported == sorted(reported)
    assert len(reported) == len(set(reported)) >= 2
    assert reported[-1] == 1.0


@pytest.mark.parametrize("output_format", ["aac", "WAV", "opus", ""])
def test_unknown_format_is_rejected(output_format):
    with pytest.raises(InvalidRequest, match="unsupported audio format") as raised:
        generate_audio(prompt="x", duration_seconds=1, seed=1, output_format=output_format)
    assert raised.value.param == "output_format"


@pytest.mark.parametrize("seconds", [0.0, -1.0, 300.5, math.nan, math.inf])
def test_impossible_duration_is_rejected(seconds):
    with pytest.raises(InvalidRequest, match="duration_seconds must be") as raised:
        generate_audio(prompt="x", duration_seconds=seconds, seed=1)
    assert raised.value.param == "duration_seconds"
