"""What bytes really are: sniffed types, whole images and audio, and damage never escaping as
anything but a refusal."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from magicpixels.core.errors import DomainError, FailedPrecondition, InvalidArgument
from magicpixels.services.assets import media
from magicpixels.services.assets.media import Content
from tests.assets.samples import (
    HTML,
    encode_audio,
    encode_image,
    encode_video,
    png_header_only,
)

SAMPLES = {
    "image/png": encode_image("PNG", (40, 30)),
    "image/jpeg": encode_image("JPEG", (40, 30)),
    "image/webp": encode_image("WEBP", (40, 30)),
    "audio/wav": encode_audio("audio/wav", seconds=0.5),
    "audio/mpeg": encode_audio("audio/mpeg", seconds=0.5),
    "audio/flac": encode_audio("audio/flac", seconds=0.5),
    "audio/ogg": encode_audio("audio/ogg", seconds=0.5),
    "video/mp4": encode_video(seconds=0.5),
}


def _probe(content_type: str, data: bytes) -> Content:
    return media.probe(content_type, io.BytesIO(data))


@pytest.mark.parametrize("content_type", SAMPLES)
def test_sniff_reads_each_type_from_its_first_bytes(content_type: str) -> None:
    assert media.sniff(io.BytesIO(SAMPLES[content_type])) == content_type


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a" + bytes(10), HTML, b"RIFF\0\0\0\0AVI ", b"\xff\xfb\xf0\x00", b"\xff"]
)
def test_sniff_finds_nothing_in_other_bytes(data: bytes) -> None:
    assert media.sniff(io.BytesIO(data)) is None


def test_an_mp3_without_a_xing_header_is_accepted_for_its_estimated_length() -> None:
    data = encode_audio("audio/mpeg", seconds=3, options={"write_xing": "0"})

    assert _probe("audio/mpeg", data).duration_seconds == pytest.approx(3, abs=0.06)


def test_a_progressive_jpeg_with_an_embedded_thumbnail_is_one_whole_image() -> None:
    """The thumbnail's own end marker, inside an APP1 segment, is not the image's end."""
    image = encode_image("JPEG", (120, 80))
    thumbnail = encode_image("JPEG", (24, 16))
    segment = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    progressive = io.BytesIO()
    Image.open(io.BytesIO(image)).save(progressive, "JPEG", progressive=True)
    data = progressive.getvalue()

    assert _probe("image/jpeg", data[:2] + segment + data[2:]) == Content("image/jpeg", 120, 80)


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/webp", "audio/wav"])
def test_bytes_after_the_end_are_refused_with_their_count(content_type: str) -> None:
    name = media.FORMAT_NAMES[content_type]

    with pytest.raises(FailedPrecondition) as caught:
        _probe(content_type, SAMPLES[content_type] + HTML)

    assert caught.value.message == (
        f"{len(HTML)} bytes follow the end of the {name} data: upload the file alone"
    )


def test_the_pixel_limit_is_checked_before_any_pixel_is_decoded() -> None:
    """The file has no pixel data: decoding it would find it truncated, not too large."""
    with pytest.raises(InvalidArgument) as caught:
        _probe("image/png", png_header_only(8000, 5001))

    assert (caught.value.reason, caught.value.message) == (
        "PAYLOAD_TOO_LARGE",
        "the image exceeds 40 megapixels",
    )
    assert _probe("image/png", encode_image("PNG", (8000, 1))).width == 8000


def test_audio_of_exactly_ten_minutes_is_accepted() -> None:
    data = encode_audio("audio/flac", seconds=600, rate=8000)

    assert _probe("audio/flac", data).duration_seconds == 600


def test_video_must_be_h264_and_whole() -> None:
    mpeg4 = encode_video(codec="mpeg4")
    video = SAMPLES["video/mp4"]

    with pytest.raises(FailedPrecondition, match=r"MP4 videos must be H\.264"):
        _probe("video/mp4", mpeg4)
    with pytest.raises(FailedPrecondition, match="the MP4 data is truncated or corrupt"):
        _probe("video/mp4", video[: len(video) // 2])


@given(
    content_type=st.sampled_from(list(SAMPLES)),
    where=st.floats(min_value=0, max_value=1),
    damage=st.binary(min_size=1, max_size=64),
    cut=st.booleans(),
)
def test_damage_anywhere_gives_content_or_a_refusal_never_a_crash(
    content_type: str, where: float, damage: bytes, cut: bool
) -> None:
    data = SAMPLES[content_type]
    at = int(len(data) * where)
    damaged = data[:at] if cut else data[:at] + damage + data[at + len(damage) :]

    outcome: Content | DomainError
    try:
        outcome = media.probe(content_type, io.BytesIO(damaged))
    except DomainError as refusal:
        outcome = refusal

    if isinstance(outcome, DomainError):
        assert outcome.reason in ("UNSUPPORTED_MEDIA_TYPE", "PAYLOAD_TOO_LARGE")
    else:
        assert outcome.content_type == content_type
