import io
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from magicpixels.core.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from magicpixels.services.assets import domain
from magicpixels.services.assets.domain import MIB, Content, Kind, Origin

KEY = b"test-signing-key"
NOW = datetime(2026, 11, 24, 6, 19, 12, tzinfo=UTC)


def _plan(**overrides: Any) -> domain.UploadPlan:
    fields: dict[str, Any] = {
        "account_id": "acct_1",
        "livemode": False,
        "content_type": "image/png",
        "origin": Origin.UPLOAD,
        "job_id": "",
        "declared_size": None,
    } | overrides
    return domain.plan_upload(**fields)


def _refused(error: DomainError, kind: type[DomainError], reason: str, param: str | None) -> None:
    assert type(error) is kind
    assert (error.reason, error.param) == (reason, param)


@pytest.mark.parametrize(
    ("declared", "canonical", "kind"),
    [
        ("image/PNG", "image/png", Kind.IMAGE),
        ("image/jpg", "image/jpeg", Kind.IMAGE),
        (" image/webp ; q=0.9", "image/webp", Kind.IMAGE),
    ],
)
def test_plan_upload_canonicalises_the_declared_type(
    declared: str, canonical: str, kind: Kind
) -> None:
    plan = _plan(content_type=declared, declared_size=123)

    assert (plan.content_type, plan.kind, plan.declared_size) == (canonical, kind, 123)
    assert (plan.origin, plan.job_id, plan.max_bytes) == (Origin.UPLOAD, None, 20 * MIB)


def test_plan_upload_accepts_generated_audio_and_video_with_their_job() -> None:
    audio = _plan(content_type="audio/x-wav", origin=Origin.GENERATED, job_id="job_1")
    video = _plan(content_type="video/mp4", origin=Origin.GENERATED, job_id="job_1")

    assert (audio.kind, audio.content_type, audio.job_id, audio.max_bytes) == (
        Kind.AUDIO,
        "audio/wav",
        "job_1",
        50 * MIB,
    )
    assert (video.kind, video.content_type) == (Kind.VIDEO, "video/mp4")


def test_plan_upload_accepts_a_declared_size_at_the_limit() -> None:
    assert _plan(declared_size=20 * MIB).declared_size == 20 * MIB


@pytest.mark.parametrize(
    ("overrides", "kind", "reason", "param"),
    [
        ({"account_id": ""}, InvalidArgument, "PARAMETER_MISSING", "account_id"),
        ({"content_type": ""}, InvalidArgument, "PARAMETER_MISSING", "content_type"),
        ({"origin": None}, InvalidArgument, "PARAMETER_INVALID", "origin"),
        ({"content_type": "image/gif"}, FailedPrecondition, "UNSUPPORTED_MEDIA_TYPE", None),
        ({"content_type": "text/plain"}, FailedPrecondition, "UNSUPPORTED_MEDIA_TYPE", None),
        ({"content_type": "video/mp4"}, FailedPrecondition, "UNSUPPORTED_MEDIA_TYPE", None),
        ({"declared_size": 20 * MIB + 1}, InvalidArgument, "PAYLOAD_TOO_LARGE", None),
        ({"declared_size": -1}, InvalidArgument, "PARAMETER_INVALID", "size_bytes"),
        ({"job_id": "job_1"}, InvalidArgument, "PARAMETER_INVALID", "job_id"),
        ({"origin": Origin.GENERATED}, InvalidArgument, "PARAMETER_MISSING", "job_id"),
    ],
)
def test_plan_upload_refuses(
    overrides: dict[str, Any], kind: type[DomainError], reason: str, param: str | None
) -> None:
    with pytest.raises(DomainError) as caught:
        _plan(**overrides)

    _refused(caught.value, kind, reason, param)


@pytest.mark.parametrize(
    ("declared", "canonical"),
    [("audio/x-wav", "audio/wav"), ("audio/MP3", "audio/mpeg"), ("application/ogg", "audio/ogg")],
)
def test_audio_uploads_are_planned_with_the_50_mib_limit(declared: str, canonical: str) -> None:
    plan = _plan(content_type=declared)

    assert (plan.kind, plan.content_type, plan.max_bytes) == (Kind.AUDIO, canonical, 50 * MIB)


def test_a_video_upload_says_video_is_only_generated() -> None:
    with pytest.raises(FailedPrecondition, match="video is only generated, not uploaded"):
        _plan(content_type="video/mp4")


def test_generated_audio_limit_is_50_mib() -> None:
    generated = {"content_type": "audio/wav", "origin": Origin.GENERATED, "job_id": "job_1"}
    assert _plan(**generated, declared_size=50 * MIB).declared_size == 50 * MIB
    with pytest.raises(InvalidArgument, match="audio files are limited to 50 MiB"):
        _plan(**generated, declared_size=50 * MIB + 1)


def test_ensure_within_limit_refuses_the_first_byte_over_the_plan() -> None:
    plan = replace(_plan(), max_bytes=1000)

    domain.ensure_within_limit(plan, 1000)
    with pytest.raises(InvalidArgument) as caught:
        domain.ensure_within_limit(plan, 1001)

    assert caught.value.reason == "PAYLOAD_TOO_LARGE"


def test_ensure_received_refuses_empty_files_and_a_wrong_declared_size() -> None:
    domain.ensure_received(_plan(declared_size=10), 10)
    domain.ensure_received(_plan(), 7)
    with pytest.raises(FailedPrecondition, match="the file is empty"):
        domain.ensure_received(_plan(), 0)
    with pytest.raises(InvalidArgument) as caught:
        domain.ensure_received(_plan(declared_size=10), 9)

    _refused(caught.value, InvalidArgument, "PARAMETER_INVALID", "size_bytes")


@pytest.mark.parametrize(
    ("image_format", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")],
)
def test_inspect_content_decodes_each_image_format(
    encode_image: Any, image_format: str, content_type: str
) -> None:
    data = encode_image(image_format, (37, 21))

    content = domain.inspect_content(_plan(content_type=content_type), io.BytesIO(data))

    assert content == Content(content_type, width=37, height=21)


@pytest.mark.parametrize("content_type", ["audio/wav", "audio/mpeg", "audio/flac", "audio/ogg"])
def test_inspect_content_probes_each_audio_format(encode_audio: Any, content_type: str) -> None:
    data = encode_audio(content_type, seconds=2.5)

    content = domain.inspect_content(_plan(content_type=content_type), io.BytesIO(data))

    assert content == Content(content_type, duration_seconds=2.5)


@pytest.mark.parametrize(
    ("declared", "sent", "message"),
    [
        ("image/jpeg", "PNG", "the file is PNG but was declared as image/jpeg"),
        ("audio/wav", "PNG", "the file is PNG but was declared as audio/wav"),
        ("image/png", "audio/flac", "the file is FLAC but was declared as image/png"),
        ("audio/mpeg", "audio/wav", "the file is WAV but was declared as audio/mpeg"),
    ],
)
def test_inspect_content_refuses_content_of_another_declared_type(
    encode_image: Any, encode_audio: Any, declared: str, sent: str, message: str
) -> None:
    data = encode_audio(sent) if sent.startswith("audio/") else encode_image(sent)

    with pytest.raises(FailedPrecondition) as caught:
        domain.inspect_content(_plan(content_type=declared), io.BytesIO(data))

    assert (caught.value.reason, caught.value.message) == ("CONTENT_MISMATCH", message)


@pytest.mark.parametrize(
    ("declared", "data", "message"),
    [
        ("image/png", b"hello, this is not an image\n" * 50, "not a PNG, JPEG or WebP image"),
        ("image/png", b"GIF89a" + bytes(100), "not a PNG, JPEG or WebP image"),
        ("audio/wav", b"hello, this is not audio\n" * 50, "not WAV, MP3, FLAC or OGG audio"),
    ],
)
def test_inspect_content_refuses_what_is_no_supported_type(
    declared: str, data: bytes, message: str
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        domain.inspect_content(_plan(content_type=declared), io.BytesIO(data))

    assert (caught.value.reason, caught.value.message) == (
        "UNSUPPORTED_MEDIA_TYPE",
        f"the file is {message}",
    )


def test_generated_video_is_probed_for_its_size_and_length(encode_video: Any) -> None:
    plan = _plan(content_type="video/mp4", origin=Origin.GENERATED, job_id="job_1")

    content = domain.inspect_content(plan, io.BytesIO(encode_video(seconds=2, size=(64, 48))))

    assert content == Content("video/mp4", width=64, height=48, duration_seconds=2.0)


def test_new_asset_records_the_plan_the_content_and_the_blob() -> None:
    record = domain.new_asset(
        _plan(livemode=True),
        Content("image/png", 4, 3),
        blob_key="ab" * 32,
        size=99,
        sha256="ab" * 32,
        now=NOW,
    )

    assert re.fullmatch(r"asset_[0-9A-Z]{30}", record.id)
    assert (record.account_id, record.livemode, record.kind, record.origin) == (
        "acct_1",
        True,
        Kind.IMAGE,
        Origin.UPLOAD,
    )
    assert (record.size_bytes, record.width, record.height, record.created_at) == (99, 4, 3, NOW)


def test_visible_hides_another_accounts_asset() -> None:
    record = domain.new_asset(
        _plan(), Content("image/png"), blob_key="ab" * 32, size=1, sha256="ab" * 32, now=NOW
    )

    assert domain.visible(record, record.id, "acct_1") is record
    for found, account in ((record, "acct_2"), (None, "acct_1")):
        with pytest.raises(DomainError) as caught:
            domain.visible(found, record.id, account)
        _refused(caught.value, type(caught.value), "ASSET_NOT_FOUND", None)
        assert caught.value.code.name == "NOT_FOUND"


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [(0, 0, (0, 10)), (3, 4, (3, 4)), (8, 5, (8, 2)), (9, 0, (9, 1))],
)
def test_byte_range(offset: int, length: int, expected: tuple[int, int]) -> None:
    assert domain.byte_range(10, offset, length) == expected


@pytest.mark.parametrize(("offset", "length"), [(10, 0), (11, 1), (-1, 0), (0, -1)])
def test_byte_range_outside_the_asset_is_refused(offset: int, length: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.byte_range(10, offset, length)

    _refused(caught.value, InvalidArgument, "RANGE_NOT_SATISFIABLE", "range")


@pytest.mark.parametrize("expires_in", [60, 3600, 86_400])
def test_url_expiry(expires_in: int) -> None:
    assert domain.url_expiry(NOW, expires_in) == int(NOW.timestamp()) + expires_in


@pytest.mark.parametrize("expires_in", [0, 59, 86_401, -60])
def test_url_expiry_outside_a_minute_to_a_day_is_refused(expires_in: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.url_expiry(NOW, expires_in)

    _refused(caught.value, InvalidArgument, "PARAMETER_INVALID", "expires_in")


def test_signed_query_verifies_until_it_expires() -> None:
    expires = int(NOW.timestamp()) + 60
    query = domain.signed_query(KEY, "asset_1", expires)

    assert re.fullmatch(rf"expires={expires}&signature=[A-Za-z0-9_-]{{43}}", query)
    domain.verify_signed_query(KEY, "asset_1", query, NOW)
    with pytest.raises(FailedPrecondition) as caught:
        domain.verify_signed_query(KEY, "asset_1", query, datetime.fromtimestamp(expires, UTC))
    assert caught.value.reason == "URL_EXPIRED"


def test_an_expired_query_with_a_valid_signature_is_expired_not_invalid() -> None:
    query = domain.signed_query(KEY, "asset_1", int(NOW.timestamp()) - 1)

    with pytest.raises(FailedPrecondition) as caught:
        domain.verify_signed_query(KEY, "asset_1", query, NOW)

    assert caught.value.reason == "URL_EXPIRED"


def _tampered(query: str) -> str:
    signature = query.rsplit("=", 1)[1]
    flipped = "B" if signature[0] == "A" else "A"
    return query.replace(signature, flipped + signature[1:])


@pytest.mark.parametrize(
    ("key", "asset_id", "change"),
    [
        (KEY, "asset_2", lambda query: query),
        (b"another-key", "asset_1", lambda query: query),
        (KEY, "asset_1", _tampered),
        (KEY, "asset_1", lambda query: query.replace("expires=", "expires=1")),
        (KEY, "asset_1", lambda query: query + "&download=1"),
        (KEY, "asset_1", lambda query: query + "&expires=1"),
        (KEY, "asset_1", lambda query: query.split("&")[0]),
        (KEY, "asset_1", lambda query: query.split("&")[1]),
        (KEY, "asset_1", lambda query: ""),
        (KEY, "asset_1", lambda query: "&&" + query),
        (KEY, "asset_1", lambda query: query.replace("expires=", "expires=-")),
        (KEY, "asset_1", lambda query: query.replace("expires=", "expires=+")),
    ],
)
def test_a_signed_query_for_anything_else_is_invalid(
    key: bytes, asset_id: str, change: Any
) -> None:
    query = change(domain.signed_query(KEY, "asset_1", int(NOW.timestamp()) + 60))

    with pytest.raises(PermissionDenied) as caught:
        domain.verify_signed_query(key, asset_id, query, NOW)

    assert caught.value.reason == "URL_SIGNATURE_INVALID"
