"""Media for the tests: real files encoded by Pillow and PyAV, and the bad inputs made from
them that every upload path must refuse."""

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import av
import numpy as np
from PIL import Image

Encoder = Callable[..., bytes]

# The encoder and container of each audio type.
AUDIO_FORMATS = {
    "audio/wav": ("wav", "pcm_s16le"),
    "audio/mpeg": ("mp3", "libmp3lame"),
    "audio/flac": ("flac", "flac"),
    "audio/ogg": ("ogg", "libopus"),
}


def encode_image(image_format: str, size: tuple[int, int] = (256, 192)) -> bytes:
    """Noise, so a PNG of the default size is several 64 KiB chunks long."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, image_format)
    return buffer.getvalue()


def encode_audio(
    content_type: str,
    seconds: float = 1.5,
    rate: int = 48_000,
    codec: str | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """A 440 Hz tone, mono, in the container (and by default the codec) of the type."""
    container_format, default_codec = AUDIO_FORMATS[content_type]
    tone = np.sin(np.arange(int(seconds * rate)) * (2 * np.pi * 440 / rate)) * 8000
    samples = tone.astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format, options=options or {}) as container:
        stream = container.add_stream(codec or default_codec, rate=rate, layout="mono")
        frame_size = stream.codec_context.frame_size or 4096
        for start in range(0, len(samples), frame_size):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + frame_size], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_video(
    seconds: float = 1.0, size: tuple[int, int] = (64, 48), codec: str = "libx264"
) -> bytes:
    """Frames of a brightening grey, 24 per second, in MP4."""
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(int(seconds * 24)):
            pixels = np.full((height, width, 3), index * 5 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


@dataclass(frozen=True)
class BadInput:
    """An upload the assets service must refuse, and the ErrorInfo reason it refuses it with."""

    name: str
    content_type: str
    data: bytes
    reason: str


UNSUPPORTED = "UNSUPPORTED_MEDIA_TYPE"
MISMATCH = "CONTENT_MISMATCH"
TOO_LARGE = "PAYLOAD_TOO_LARGE"
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>\n"
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims the size but carries no pixels: a decompression bomb's opening."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"")


def blank_image(image_format: str, size: tuple[int, int]) -> bytes:
    """One grey: a huge image in a small file."""
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, image_format)
    return buffer.getvalue()


def _damaged(data: bytes, at: float, damage: bytes) -> bytes:
    start = int(len(data) * at)
    return data[:start] + damage + data[start + len(damage) :]


def _zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", HTML)
    return buffer.getvalue()


def _riff_wave_then(garbage: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", len(garbage) + 4) + b"WAVE" + garbage


def _mp3_longer_than_it_states() -> bytes:
    """1.5 s whose Xing header says so, then 11 minutes of frames that state nothing."""
    stated = encode_audio("audio/mpeg", seconds=1.5, rate=8000)
    unstated = encode_audio(
        "audio/mpeg", seconds=660, rate=8000, options={"write_xing": "0", "id3v2_version": "0"}
    )
    return stated + unstated


@cache
def bad_inputs() -> tuple[BadInput, ...]:
    """Made once per test session: some are megabytes long."""
    png, jpeg, webp = encode_image("PNG"), encode_image("JPEG"), encode_image("WEBP")
    wav, mp3 = encode_audio("audio/wav"), encode_audio("audio/mpeg")
    flac = encode_audio("audio/flac", seconds=3)
    noise = random.Random(5).randbytes(50_000)
    return (
        BadInput("zero bytes", "image/png", b"", UNSUPPORTED),
        BadInput("truncated PNG", "image/png", png[: len(png) // 2], UNSUPPORTED),
        BadInput("PNG without its IEND chunk", "image/png", png[:-12], UNSUPPORTED),
        BadInput("truncated JPEG", "image/jpeg", jpeg[: len(jpeg) // 2], UNSUPPORTED),
        BadInput("JPEG without its end marker", "image/jpeg", jpeg[:-2], UNSUPPORTED),
        BadInput("truncated WebP", "image/webp", webp[: len(webp) * 9 // 10], UNSUPPORTED),
        BadInput("PNG chunk with a bad CRC", "image/png", _damaged(png, 0.5, b"\0"), UNSUPPORTED),
        BadInput(
            "PNG chunk with a bad length",
            "image/png",
            png[:8] + b"\xff\xff\xff\xf0" + png[12:],
            UNSUPPORTED,
        ),
        BadInput("decompression bomb header", "image/png", png_header_only(7000, 6000), TOO_LARGE),
        BadInput("decompression bomb", "image/png", blank_image("PNG", (8000, 6000)), TOO_LARGE),
        BadInput(
            "JPEG over 40 megapixels", "image/jpeg", blank_image("JPEG", (6500, 6500)), TOO_LARGE
        ),
        BadInput("image over 20 MiB", "image/png", bytes(20 * 1024 * 1024 + 1), TOO_LARGE),
        BadInput("text as PNG", "image/png", b"just some text, not an image\n" * 100, UNSUPPORTED),
        BadInput("HTML as PNG", "image/png", HTML, UNSUPPORTED),
        BadInput("HTML as HTML", "text/html", HTML, UNSUPPORTED),
        BadInput("SVG as SVG", "image/svg+xml", SVG, UNSUPPORTED),
        BadInput("SVG as PNG", "image/png", SVG, UNSUPPORTED),
        BadInput("PNG and HTML polyglot", "image/png", png + HTML, UNSUPPORTED),
        BadInput("JPEG and ZIP polyglot", "image/jpeg", jpeg + _zip_archive(), UNSUPPORTED),
        BadInput("HTML before a PNG", "image/png", HTML + png, UNSUPPORTED),
        BadInput("PNG declared as JPEG", "image/jpeg", png, MISMATCH),
        BadInput("WebP declared as PNG", "image/png", webp, MISMATCH),
        BadInput("PNG declared as WAV", "audio/wav", png, MISMATCH),
        BadInput("GIF", "image/gif", b"GIF89a" + bytes(200), UNSUPPORTED),
        BadInput("GIF declared as PNG", "image/png", b"GIF89a" + bytes(200), UNSUPPORTED),
        BadInput("WAV declared as MP3", "audio/mpeg", wav, MISMATCH),
        BadInput("MP3 declared as FLAC", "audio/flac", mp3, MISMATCH),
        BadInput(
            "WAV over 10 minutes",
            "audio/wav",
            encode_audio("audio/wav", seconds=601, rate=8000),
            TOO_LARGE,
        ),
        BadInput("MP3 over 10 minutes", "audio/mpeg", _mp3_longer_than_it_states(), TOO_LARGE),
        BadInput("garbage as WAV", "audio/wav", noise, UNSUPPORTED),
        BadInput("a WAV header, then garbage", "audio/wav", _riff_wave_then(noise), UNSUPPORTED),
        BadInput("truncated WAV", "audio/wav", wav[: len(wav) // 2], UNSUPPORTED),
        BadInput("WAV and HTML polyglot", "audio/wav", wav + HTML, UNSUPPORTED),
        BadInput("truncated MP3", "audio/mpeg", mp3[: len(mp3) // 2], UNSUPPORTED),
        BadInput("truncated FLAC", "audio/flac", flac[: len(flac) // 2], UNSUPPORTED),
        BadInput("damaged FLAC frame", "audio/flac", _damaged(flac, 0.5, b"U" * 64), UNSUPPORTED),
        BadInput(
            "ADPCM in WAV",
            "audio/wav",
            encode_audio("audio/wav", codec="adpcm_ms"),
            UNSUPPORTED,
        ),
        BadInput("uploaded MP4 video", "video/mp4", encode_video(), UNSUPPORTED),
        BadInput("JSON", "application/json", b'{"not": "media"}', UNSUPPORTED),
    )
