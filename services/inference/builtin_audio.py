"""Built-in CPU text-to-audio generator: a piece synthesised from the prompt, no model weights.

Prompt words choose the tempo, scale, lead instrument and whether drums play; the seed writes
the melody, bass line and chords. The piece is a list of sounds (notes and drum hits) that is
rendered and encoded half a second at a time, so a long piece needs no more memory than a
short one, and it lasts exactly the requested number of samples.
"""

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np

from magicpixels.services.inference.encoding import SAMPLE_RATE, AudioTrack, open_output
from magicpixels.services.inference.media import EncodedMedia, InvalidRequest, Progress
from magicpixels.services.inference.prompt import hash_text, last_match, prompt_words, word_set

AUDIO_FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
}
MAX_AUDIO_SECONDS = 300.0

# output format -> (container, codec)
_ENCODERS = {
    "wav": ("wav", "pcm_s16le"),
    "mp3": ("mp3", "libmp3lame"),
    "flac": ("flac", "flac"),
    "ogg": ("ogg", "libopus"),
}
_BLOCK_SAMPLES = SAMPLE_RATE // 2
_PROGRESS_TICKS = 20
_BEATS_PER_BAR = 4
_STEPS_PER_BEAT = 4
_TWO_PI = np.float32(2 * np.pi)
_FADE_IN_SECONDS = 0.01
_FADE_OUT_SECONDS = 2.0


@dataclass(frozen=True)
class Voice:
    """An instrument: partials (frequency ratio, level) under one envelope."""

    partials: tuple[tuple[float, float], ...]
    attack: float  # seconds to full level
    decay: float  # per second, of the level above `sustain`
    sustain: float
    release: float  # seconds from the note's end to silence
    # Higher partials fade this much faster per partial: what makes a pluck go dull.
    damping: float = 0.0
    vibrato: float = 0.0  # depth, as a fraction of the frequency


def _harmonics(count: int, *, step: int = 1) -> tuple[tuple[float, float], ...]:
    return tuple((float(n), 1.0 / n) for n in range(1, count + 1, step))


VOICES: dict[str, Voice] = {
    "piano": Voice(
        ((1, 1.0), (2, 0.45), (3, 0.25), (4, 0.12), (5, 0.08), (6, 0.04)),
        attack=0.005,
        decay=2.2,
        sustain=0.04,
        release=0.2,
        damping=0.6,
    ),
    "bell": Voice(
        ((1, 1.0), (2.76, 0.5), (5.4, 0.28), (8.93, 0.14)),
        attack=0.002,
        decay=1.1,
        sustain=0.0,
        release=0.4,
        damping=0.9,
    ),
    "pluck": Voice(_harmonics(8), attack=0.003, decay=3.5, sustain=0.0, release=0.1, damping=1.4),
    "flute": Voice(
        ((1, 1.0), (2, 0.22), (3, 0.08)),
        attack=0.07,
        decay=0.6,
        sustain=0.8,
        release=0.12,
        vibrato=0.006,
    ),
    "strings": Voice(
        _harmonics(7), attack=0.25, decay=0.3, sustain=0.85, release=0.45, vibrato=0.004
    ),
    "organ": Voice(
        ((1, 1.0), (2, 0.6), (3, 0.35), (4, 0.25), (6, 0.15), (8, 0.1)),
        attack=0.02,
        decay=0.0,
        sustain=1.0,
        release=0.08,
    ),
    "chip": Voice(_harmonics(9, step=2), attack=0.004, decay=1.0, sustain=0.6, release=0.05),
    "synth": Voice(_harmonics(10), attack=0.01, decay=2.0, sustain=0.4, release=0.12, damping=0.4),
}


@dataclass(frozen=True)
class Part:
    """A voice at its place in the mix."""

    voice: Voice
    level: float
    pan: float  # -1 (left) to 1 (right)

    @property
    def gains(self) -> tuple[float, float]:
        return _gains(self.level, self.pan)


def _gains(level: float, pan: float) -> tuple[float, float]:
    """Equal-power panning: (left, right)."""
    angle = (pan + 1) * np.pi / 4
    return level * float(np.cos(angle)), level * float(np.sin(angle))


_PAD_VOICE = Voice(
    ((1, 1.0), (2, 0.3), (3, 0.1)), attack=0.5, decay=0.2, sustain=0.9, release=0.8, vibrato=0.003
)
# Each chord note twice, slightly detuned and spread wide: a slow chorus.
_PAD_CHORUS = ((0.997, Part(_PAD_VOICE, 0.05, -0.6)), (1.003, Part(_PAD_VOICE, 0.05, 0.6)))
_BASS = Part(
    Voice(((1, 1.0), (2, 0.35), (3, 0.1)), attack=0.01, decay=2.5, sustain=0.35, release=0.12),
    level=0.3,
    pan=0.0,
)
_DEFAULT_LEADS = ("piano", "bell", "pluck", "flute", "synth")

_VOICE_WORDS: dict[str, str] = {
    **dict.fromkeys(word_set("piano key keyboard"), "piano"),
    **dict.fromkeys(word_set("bell chime glockenspiel celesta xylophone"), "bell"),
    **dict.fromkeys(word_set("guitar harp pluck plucked banjo ukulele lute koto"), "pluck"),
    **dict.fromkeys(word_set("flute whistle ocarina recorder pan"), "flute"),
    **dict.fromkeys(word_set("string violin cello orchestra cinematic choir"), "strings"),
    **dict.fromkeys(word_set("organ church hymn cathedral"), "organ"),
    **dict.fromkeys(word_set("chiptune retro arcade game pixel"), "chip"),
    **dict.fromkeys(word_set("synth electronic techno synthwave edm trance"), "synth"),
}

_TEMPO_WORDS: dict[str, float] = {
    **dict.fromkeys(word_set("lullaby meditation sleep"), 60.0),
    **dict.fromkeys(word_set("ambient slow drone"), 66.0),
    **dict.fromkeys(word_set("calm peaceful relaxing sad melancholy gentle"), 72.0),
    **dict.fromkeys(word_set("dreamy lofi chill"), 80.0),
    **dict.fromkeys(word_set("epic cinematic jazz funk groovy"), 100.0),
    **dict.fromkeys(word_set("happy cheerful march walking"), 112.0),
    **dict.fromkeys(word_set("upbeat dance house disco party"), 124.0),
    **dict.fromkeys(word_set("rock techno energetic"), 132.0),
    **dict.fromkeys(word_set("fast chase action race"), 148.0),
}

_SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
}
_SCALE_WORDS: dict[str, str] = {
    **dict.fromkeys(
        word_set("happy joyful cheerful bright sunny uplifting hopeful triumphant summer"), "major"
    ),
    **dict.fromkeys(
        word_set("sad melancholy dark gloomy lonely rain night tragic sorrow somber"), "minor"
    ),
    **dict.fromkeys(word_set("mysterious spooky eerie haunted horror tense sinister"), "phrygian"),
    **dict.fromkeys(word_set("dreamy magical space ethereal fantasy wonder floating"), "lydian"),
    **dict.fromkeys(
        word_set("calm peaceful zen ocean meditation pastoral nature gentle"), "major_pentatonic"
    ),
    **dict.fromkeys(word_set("blues jazz lofi funk groovy soul"), "dorian"),
}
_DEFAULT_SCALES = ("major_pentatonic", "minor_pentatonic", "major", "minor", "dorian")

_DRUM_WORDS = word_set(
    "drum beat percussion groove dance rock techno house hop funk disco party energetic upbeat "
    "march"
)
_QUIET_WORDS = word_set(
    "ambient calm peaceful lullaby meditation sleep quiet gentle dreamy relaxing solo drone"
)

# Chord roots as scale degrees, one per bar.
_PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4), (0, 3, 0, 4), (0, 2, 3, 4))
# Note lengths in beats, one bar each; slow pieces draw from the first ones.
_RHYTHMS = (
    (2.0, 2.0),
    (1.0, 1.0, 2.0),
    (1.5, 0.5, 2.0),
    (1.0, 1.0, 1.0, 1.0),
    (2.0, 1.0, 1.0),
    (0.5, 0.5, 1.0, 2.0),
    (1.0, 0.5, 0.5, 1.0, 1.0),
    (0.5, 0.5, 0.5, 0.5, 1.0, 1.0),
)


@dataclass(frozen=True)
class Music:
    """What the prompt asks for."""

    tempo: float  # beats per minute
    scale: tuple[int, ...]  # semitones above the tonic
    tonic: int  # MIDI note the melody centres on
    lead: Voice
    drums: bool
    fingerprint: int

    @property
    def beat_samples(self) -> float:
        return SAMPLE_RATE * 60.0 / self.tempo


@dataclass(frozen=True)
class Sound:
    """A note or a drum hit: `render` gives its mono samples at offsets from `start`."""

    start: int
    length: int
    gains: tuple[float, float]  # left, right
    render: Callable[[np.ndarray], np.ndarray]


def generate_audio(
    *,
    prompt: str,
    duration_seconds: float,
    seed: int,
    output_format: str = "wav",
    on_progress: Callable[[float], None] | None = None,
) -> EncodedMedia:
    check_audio_request(output_format, duration_seconds)
    total = round(duration_seconds * SAMPLE_RATE)
    progress = Progress(_PROGRESS_TICKS, on_progress)
    music = read_music(prompt)
    rng = np.random.default_rng([music.fingerprint, seed % 2**64])
    piece = Piece(compose(music, rng, total), total)
    blocks = (
        piece.render(first, min(first + _BLOCK_SAMPLES, total))
        for first in range(0, total, _BLOCK_SAMPLES)
    )
    media = encode_audio(blocks, total, output_format, progress.part(0.0, 0.95))
    progress.reach(1.0)
    return media


def encode_audio(
    blocks: Iterable[np.ndarray],
    total: int,
    output_format: str,
    on_fraction: Callable[[float], None],
) -> EncodedMedia:
    """`total` samples, given as (2, n) float32 blocks at SAMPLE_RATE, in the output format."""
    container_format, codec = _ENCODERS[output_format]
    buffer = io.BytesIO()
    written = 0
    with open_output(buffer, container_format) as container:
        track = AudioTrack(container, codec)
        for block in blocks:
            track.write(block)
            written += block.shape[1]
            on_fraction(written / total)
        track.close()
    return EncodedMedia(
        buffer.getvalue(), AUDIO_FORMATS[output_format], duration_seconds=total / SAMPLE_RATE
    )


def check_audio_request(output_format: str, duration_seconds: float) -> None:
    if output_format not in AUDIO_FORMATS:
        raise InvalidRequest(
            "output_format",
            f"unsupported audio format {output_format!r}; use one of {sorted(AUDIO_FORMATS)}",
        )
    if not (math.isfinite(duration_seconds) and 0 < duration_seconds <= MAX_AUDIO_SECONDS):
        raise InvalidRequest(
            "duration_seconds",
            f"duration_seconds must be above 0 and at most {MAX_AUDIO_SECONDS:g}, "
            f"got {duration_seconds!r}",
        )


# ---------------------------------------------------------------- reading the prompt


def read_music(prompt: str) -> Music:
    words = prompt_words(prompt)
    fingerprint = hash_text(prompt.strip())
    tempo = last_match(words, _TEMPO_WORDS, 84.0 + fingerprint % 40)
    scale = last_match(words, _SCALE_WORDS, _DEFAULT_SCALES[fingerprint % len(_DEFAULT_SCALES)])
    lead = last_match(words, _VOICE_WORDS, _DEFAULT_LEADS[(fingerprint >> 8) % len(_DEFAULT_LEADS)])
    return Music(
        tempo=tempo,
        scale=_SCALES[scale],
        tonic=57 + (fingerprint >> 16) % 8,  # A3 to E4
        lead=VOICES[lead],
        drums=_wants_drums(words, tempo),
        fingerprint=fingerprint,
    )


def _wants_drums(words: list[str], tempo: float) -> bool:
    vote = sum(word in _DRUM_WORDS for word in words) - sum(word in _QUIET_WORDS for word in words)
    return vote > 0 if vote else tempo >= 100


# ---------------------------------------------------------------- composing


def compose(music: Music, rng: np.random.Generator, total: int) -> list[Sound]:
    bar = music.beat_samples * _BEATS_PER_BAR
    bars = int(total // bar) + 1
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    chords = [progression[index % len(progression)] for index in range(bars)]
    sounds = _melody(music, rng, chords) + _harmony(music, chords) + _bass(music, rng, chords)
    if music.drums:
        sounds += _drums(music, rng, bars)
    return sorted((sound for sound in sounds if sound.start < total), key=lambda s: s.start)


def _pitch(music: Music, degree: int, octave: int = 0) -> float:
    """The frequency of a scale degree (any integer: it wraps into the octaves around)."""
    size = len(music.scale)
    octaves, step = divmod(degree, size)
    midi = music.tonic + 12 * (octave + octaves) + music.scale[step]
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _note(music: Music, part: Part, start_beat: float, beats: float, frequency: float) -> Sound:
    hold = beats * music.beat_samples / SAMPLE_RATE
    length = int((hold + part.voice.release) * SAMPLE_RATE)
    render = partial(_voice_wave, part.voice, frequency, hold)
    return Sound(int(start_beat * music.beat_samples), length, part.gains, render)


def _melody(music: Music, rng: np.random.Generator, chords: list[int]) -> list[Sound]:
    # Slow pieces keep to the longer notes at the start of _RHYTHMS.
    choices = len(_RHYTHMS) - (3 if music.tempo < 90 else 0)
    phrase = _phrase(rng, choices)
    lead = Part(music.lead, 0.3, float(rng.uniform(-0.25, 0.25)))
    sounds, degree = [], 0
    for bar, chord in enumerate(chords):
        beat = float(bar * _BEATS_PER_BAR)
        for index, beats in enumerate(phrase[bar % 4]):
            degree = _next_degree(rng, degree, chord, len(music.scale), on_downbeat=index == 0)
            resting = index > 0 and rng.random() < 0.12
            if not resting:
                frequency = _pitch(music, degree)
                sounds.append(_note(music, lead, beat, beats * 0.92, frequency))
            beat += beats
        if bar % 8 == 7:  # a new phrase every eight bars keeps long pieces moving
            phrase = _phrase(rng, choices)
    return sounds


def _phrase(rng: np.random.Generator, choices: int) -> list[tuple[float, ...]]:
    """The rhythm of four bars, played twice; the pitches wander anew each time."""
    return [_RHYTHMS[int(rng.integers(choices))] for _ in range(4)]


def _next_degree(
    rng: np.random.Generator, degree: int, chord: int, size: int, *, on_downbeat: bool
) -> int:
    if on_downbeat:  # land on the chord: its root, third or fifth nearest the line
        tones = [chord + offset + size * shift for offset in (0, 2, 4) for shift in (-1, 0, 1)]
        return min(tones, key=lambda tone: (abs(tone - degree), tone))
    step = int(rng.choice((-2, -1, -1, 0, 1, 1, 2)))
    return int(np.clip(degree + step, -3, 9))


def _harmony(music: Music, chords: list[int]) -> list[Sound]:
    return [
        _note(music, part, bar * _BEATS_PER_BAR, _BEATS_PER_BAR, detune * frequency)
        for bar, chord in enumerate(chords)
        for frequency in (_pitch(music, chord + offset, octave=-1) for offset in (0, 2, 4))
        for detune, part in _PAD_CHORUS
    ]


def _bass(music: Music, rng: np.random.Generator, chords: list[int]) -> list[Sound]:
    pattern = ((0.0, 2.0), (2.0, 2.0)) if rng.random() < 0.5 else ((0.0, 3.0), (3.0, 1.0))
    return [
        _note(music, _BASS, bar * _BEATS_PER_BAR + beat, beats * 0.9, _pitch(music, chord, -2))
        for bar, chord in enumerate(chords)
        for beat, beats in pattern
    ]


def _drums(music: Music, rng: np.random.Generator, bars: int) -> list[Sound]:
    kits = _drum_kit(rng)
    steps = _BEATS_PER_BAR * _STEPS_PER_BEAT
    kick = {0, 8} | ({10} if rng.random() < 0.5 else set())
    snare = {4, 12}
    hat_every = 1 if music.tempo < 110 and rng.random() < 0.5 else 2
    step_samples = music.beat_samples / _STEPS_PER_BEAT
    first_bar = 1 if bars > 4 else 0  # a bar of introduction before the beat comes in
    sounds = []
    for step in range(first_bar * steps, bars * steps):
        start = int(step * step_samples)
        within = step % steps
        if within in kick:
            sounds.append(_hit(kits["kick"], start, 0.55, 0.0))
        if within in snare:
            sounds.append(_hit(kits["snare"], start, 0.3, -0.1))
        if within % hat_every == 0:
            sounds.append(_hit(kits["hat"], start, 0.12 if within % 4 else 0.18, 0.35))
    return sounds


def _hit(samples: np.ndarray, start: int, level: float, pan: float) -> Sound:
    return Sound(start, len(samples), _gains(level, pan), partial(np.take, samples))


def _drum_kit(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def seconds(length: float) -> np.ndarray:
        return np.arange(int(length * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE

    t = seconds(0.4)  # kick: a sine sweeping down from 150 Hz
    kick = np.sin(_TWO_PI * (50 * t + 100 / 30 * (1 - np.exp(-30 * t)))) * np.exp(-7 * t)
    t = seconds(0.25)  # snare: a noise burst over a 180 Hz body
    noise = rng.uniform(-1, 1, t.size).astype(np.float32)
    snare = 0.65 * noise * np.exp(-18 * t) + 0.45 * np.sin(_TWO_PI * 180 * t) * np.exp(-25 * t)
    t = seconds(0.06)  # hat: noise with its lows taken out
    hiss = np.diff(rng.uniform(-1, 1, t.size + 1).astype(np.float32))
    hat = 0.6 * hiss * np.exp(-70 * t)
    return {"kick": kick, "snare": snare, "hat": hat}


def _voice_wave(voice: Voice, frequency: float, hold: float, offsets: np.ndarray) -> np.ndarray:
    t = offsets.astype(np.float32) / SAMPLE_RATE
    phase = _TWO_PI * frequency * t
    if voice.vibrato:
        rate = 5.5
        phase -= voice.vibrato * frequency / rate * np.cos(_TWO_PI * rate * t)
    level = np.minimum(t / voice.attack, 1.0)
    level *= voice.sustain + (1 - voice.sustain) * np.exp(-voice.decay * t)
    level *= np.clip((hold + voice.release - t) / voice.release, 0.0, 1.0)
    damping = np.exp(-voice.damping * t) if voice.damping else None
    wave = np.zeros_like(t)
    fade = np.ones_like(t)
    for index, (ratio, amplitude) in enumerate(voice.partials):
        wave += amplitude * fade * np.sin(ratio * phase + index)
        if damping is not None:
            fade *= damping
    return wave * level


# ---------------------------------------------------------------- rendering


class Piece:
    """The sounds, rendered block by block; any block boundaries give the same samples."""

    def __init__(self, sounds: list[Sound], total: int) -> None:
        self.sounds = sounds
        self.total = total
        self._fade_in = _FADE_IN_SECONDS * SAMPLE_RATE
        # The piece stops where the request says, not where the music would: it fades out.
        self._fade_out = min(_FADE_OUT_SECONDS * SAMPLE_RATE, 0.2 * total)
        self._starts = np.array([sound.start for sound in sounds], dtype=np.int64)
        self._ends = self._starts + np.array([sound.length for sound in sounds], dtype=np.int64)

    def render(self, first: int, last: int) -> np.ndarray:
        mix = np.zeros((2, last - first), dtype=np.float32)
        for index in np.flatnonzero((self._starts < last) & (self._ends > first)):
            sound = self.sounds[index]
            begin, end = max(first, sound.start), min(last, sound.start + sound.length)
            mono = sound.render(np.arange(begin - sound.start, end - sound.start))
            mix[0, begin - first : end - first] += sound.gains[0] * mono
            mix[1, begin - first : end - first] += sound.gains[1] * mono
        # tanh is a soft limit: loud moments bend instead of clipping.
        return np.tanh(mix) * self._envelope(first, last)

    def _envelope(self, first: int, last: int) -> np.ndarray:
        position = np.arange(first, last, dtype=np.float64)
        rise = np.clip((position + 1) / self._fade_in, 0.0, 1.0)
        fall = np.clip((self.total - position) / self._fade_out, 0.0, 1.0)
        return (np.sin(np.pi / 2 * np.minimum(rise, fall)) ** 2).astype(np.float32)
