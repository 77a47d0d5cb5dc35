"""What stored bytes really are: the type their first bytes say, then images decoded by Pillow
and audio and video probed by PyAV, within the limits that keep decoding bounded.

Nothing here trusts a name or a declared type. Each decoder is limited to the one format the
bytes announce, and an image or a WAV file must end where its own structure says it ends: bytes
after that end (a polyglot's second payload) are refused. Everything blocks: run it in a thread.
"""

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import av.error
from PIL import Image

from magicpixels.core.errors import FailedPrecondition, InvalidArgument

MAX_IMAGE_PIXELS = 40_000_000
MAX_AUDIO_SECONDS = 600
# How far the decoded length of audio may fall short of the length its container states before
# the file counts as truncated or damaged (decoders drop a damaged frame rather than fail). WAV
# and FLAC state their exact sample count, Ogg Opus counts its pre-skip too, and an MP3 without
# a Xing header states only an estimate from its bit rate (seconds, or a share of the length).
_SHORTFALL_SECONDS = {"audio/wav": 0.001, "audio/flac": 0.001, "audio/ogg": 0.1, "audio/mpeg": 0.5}
_ESTIMATE_SHORTFALL_SHARE = 0.05

FORMAT_NAMES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WebP",
    "audio/wav": "WAV",
    "audio/mpeg": "MP3",
    "audio/flac": "FLAC",
    "audio/ogg": "OGG",
    "video/mp4": "MP4",
}
# Bytes at fixed offsets that announce each type.
_SIGNATURES: dict[str, tuple[tuple[int, bytes], ...]] = {
    "image/png": ((0, b"\x89PNG\r\n\x1a\n"),),
    "image/jpeg": ((0, b"\xff\xd8\xff"),),
    "image/webp": ((0, b"RIFF"), (8, b"WEBP")),
    "audio/wav": ((0, b"RIFF"), (8, b"WAVE")),
    "audio/flac": ((0, b"fLaC"),),
    "audio/ogg": ((0, b"OggS"),),
    "audio/mpeg": ((0, b"ID3"),),
    "video/mp4": ((4, b"ftyp"),),
}
_HEAD_BYTES = 16
_PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_DEMUXERS = {"audio/wav": "wav", "audio/mpeg": "mp3", "audio/flac": "flac", "audio/ogg": "ogg"}
_AUDIO_CODECS: dict[str, Callable[[str], bool]] = {
    "audio/wav": lambda codec: codec.startswith("pcm_"),
    "audio/mpeg": lambda codec: codec in ("mp3", "mp3float"),
    "audio/flac": lambda codec: codec == "flac",
    "audio/ogg": lambda codec: codec in ("opus", "vorbis", "flac"),
}
# What Pillow, or a walk over a file's structure, raises for a malformed or truncated file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# A byte that ends a JPEG's entropy-coded data: 0xFF before anything but stuffing or a restart.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Content:
    """What inspecting the stored bytes found."""

    content_type: str
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None


def sniff(file: BinaryIO) -> str | None:
    """The supported type the file's first bytes announce, if any."""
    file.seek(0)
    head = file.read(_HEAD_BYTES)
    for content_type, marks in _SIGNATURES.items():
        if all(head[offset : offset + len(mark)] == mark for offset, mark in marks):
            return content_type
    return "audio/mpeg" if _is_mp3_frame(head) else None


def _is_mp3_frame(head: bytes) -> bool:
    """An MPEG layer III frame header: sync bits, a known version, bit rate and sample rate."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, sample_rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer == 1 and bitrate not in (0, 15) and sample_rate != 3


def probe(content_type: str, file: BinaryIO) -> Content:
    """Decodes the file as the type `sniff` found; refuses it when that fails or a limit is hit."""
    if content_type in _PILLOW_FORMATS:
        return _probe_image(content_type, file)
    if content_type in _DEMUXERS:
        return _probe_audio(content_type, file)
    return _probe_video(file)


def _probe_image(content_type: str, file: BinaryIO) -> Content:
    pillow_format = _PILLOW_FORMATS[content_type]
    try:
        file.seek(0)
        with _open_image(file, pillow_format) as image:
            image.verify()
        file.seek(0)
        with _open_image(file, pillow_format) as image:
            image.load()
            width, height = image.size
        _ensure_whole(file, _IMAGE_ENDS[content_type](file), content_type)
    except Image.DecompressionBombError:
        raise _too_many_pixels() from None
    except _DECODE_ERRORS:
        raise _incomplete(content_type) from None
    return Content(content_type, width, height)


def _open_image(file: BinaryIO, pillow_format: str) -> Image.Image:
    image = Image.open(file, formats=(pillow_format,))
    # Checked before any pixel is decoded; Pillow's own guard only warns up to ~179 megapixels.
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise _too_many_pixels()
    return image


def _too_many_pixels() -> InvalidArgument:
    megapixels = MAX_IMAGE_PIXELS // 1_000_000
    return InvalidArgument("PAYLOAD_TOO_LARGE", f"the image exceeds {megapixels} megapixels")


def _probe_audio(content_type: str, file: BinaryIO) -> Content:
    if content_type == "audio/wav":
        try:
            _ensure_whole(file, _riff_end(file), content_type)
        except struct.error:
            raise _incomplete(content_type) from None
    file.seek(0)
    try:
        with av.open(file, format=_DEMUXERS[content_type], metadata_errors="replace") as container:
            stream = _audio_stream(container, content_type)
            stated = _stated_seconds(container, stream)
            shortfall = _shortfall(content_type, stated or 0)
            if stated is not None:
                _ensure_short_enough(stated - shortfall)
            decoded = _decoded_seconds(container, stream)
    except av.error.FFmpegError:
        raise _incomplete(content_type) from None
    if stated is not None and decoded < stated - shortfall:
        raise unsupported(
            f"the file is truncated or corrupt: it holds {decoded:.1f} s of audio "
            f"but states {stated:.1f} s"
        )
    return Content(content_type, duration_seconds=round(decoded, 3))


def _audio_stream(container: av.container.InputContainer, content_type: str) -> av.AudioStream:
    if not container.streams.audio:
        raise unsupported(f"the {FORMAT_NAMES[content_type]} file holds no audio stream")
    stream = container.streams.audio[0]
    context = stream.codec_context  # None when no decoder knows the codec
    codec = context.name if context else "unknown"
    if not _AUDIO_CODECS[content_type](codec) or not context.sample_rate:
        raise unsupported(
            f"the {FORMAT_NAMES[content_type]} file holds {codec} audio, which is not supported"
        )
    # The decoder checks the checksums the codec carries, and a damaged frame fails the file.
    stream.codec_context.options = {"err_detect": "crccheck+explode"}
    return stream


def _stated_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The length the container states, or estimates, before anything is decoded."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(Fraction(container.duration, av.time_base))
    return None


def _shortfall(content_type: str, stated: float) -> float:
    if content_type == "audio/mpeg":
        return max(_SHORTFALL_SECONDS[content_type], stated * _ESTIMATE_SHORTFALL_SHARE)
    return _SHORTFALL_SECONDS[content_type]


def _decoded_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    """Decodes every frame (a corrupt one fails), stopping once past the length limit. The
    length is summed exactly, so ten minutes to the sample are not a hair over the limit."""
    seconds = Fraction(0)
    for frame in container.decode(stream):
        seconds += Fraction(frame.samples, frame.sample_rate)
        _ensure_short_enough(seconds)
    if seconds == 0:
        raise unsupported("the file holds no audio")
    return float(seconds)


def _ensure_short_enough(seconds: float | Fraction) -> None:
    if seconds > MAX_AUDIO_SECONDS:
        raise InvalidArgument(
            "PAYLOAD_TOO_LARGE",
            f"audio is limited to {MAX_AUDIO_SECONDS // 60} minutes; this file lasts longer",
        )


def _probe_video(file: BinaryIO) -> Content:
    """Generated video only: H.264 in MP4, its size from the stream, its length by demuxing."""
    file.seek(0)
    try:
        with av.open(file, format="mp4", metadata_errors="replace") as container:
            if not container.streams.video:
                raise unsupported("the MP4 file holds no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None or stream.codec_context.name != "h264":
                raise unsupported("MP4 videos must be H.264")
            width, height = stream.codec_context.width, stream.codec_context.height
            seconds = _demuxed_seconds(container, stream)
    except av.error.FFmpegError:
        raise _incomplete("video/mp4") from None
    return Content("video/mp4", width, height, round(seconds, 3))


def _demuxed_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    end = 0
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = max(end, packet.pts + (packet.duration or 0))
    if not end or stream.time_base is None:
        raise unsupported("the video holds no frames")
    return float((end - (stream.start_time or 0)) * stream.time_base)


def _ensure_whole(file: BinaryIO, end: int, content_type: str) -> None:
    """The file must end where its structure ends."""
    size = file.seek(0, os.SEEK_END)
    if end > size:
        raise _incomplete(content_type)
    if end < size:
        raise unsupported(
            f"{size - end} bytes follow the end of the {FORMAT_NAMES[content_type]} data: "
            "upload the file alone"
        )


def _png_end(file: BinaryIO) -> int:
    """Where the IEND chunk ends, walking the chunks from the signature."""
    file.seek(8)
    while True:
        length, kind = struct.unpack(">I4s", _read(file, 8))
        end = file.seek(length + 4, os.SEEK_CUR)
        if kind == b"IEND":
            return end


def _riff_end(file: BinaryIO) -> int:
    """Where a RIFF file (WebP, WAV) ends by its header."""
    file.seek(4)
    (size,) = struct.unpack("<I", _read(file, 4))
    return 8 + size


def _jpeg_end(file: BinaryIO) -> int:
    """Where the end-of-image marker ends, walking the segments and skipping entropy-coded data."""
    file.seek(2)
    while True:
        marker = _jpeg_marker(file)
        if marker == _JPEG_EOI:
            return file.tell()
        if marker in _JPEG_STANDALONE:
            continue
        (length,) = struct.unpack(">H", _read(file, 2))
        file.seek(length - 2, os.SEEK_CUR)
        if marker == _JPEG_SOS:
            _skip_entropy_coded(file)


def _jpeg_marker(file: BinaryIO) -> int:
    if _read(file, 1) != b"\xff":
        raise struct.error("a JPEG segment does not start with a marker")
    code = _read(file, 1)
    while code == b"\xff":  # fill bytes
        code = _read(file, 1)
    return code[0]


def _skip_entropy_coded(file: BinaryIO) -> None:
    """Moves to the marker that ends a scan's data."""
    carried = b""
    while block := file.read(_BLOCK):
        data = carried + block
        found = _SCAN_END.search(data)
        if found:
            file.seek(found.start() - len(data), os.SEEK_CUR)
            return
        carried = data[-1:] if data.endswith(b"\xff") else b""
    raise struct.error("a JPEG scan has no end")


_IMAGE_ENDS: dict[str, Callable[[BinaryIO], int]] = {
    "image/png": _png_end,
    "image/jpeg": _jpeg_end,
    "image/webp": _riff_end,
}


def _read(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise struct.error("the file ends inside its structure")
    return data


def _incomplete(content_type: str) -> FailedPrecondition:
    return unsupported(f"the {FORMAT_NAMES[content_type]} data is truncated or corrupt")


def unsupported(message: str) -> FailedPrecondition:
    return FailedPrecondition("UNSUPPORTED_MEDIA_TYPE", message)
