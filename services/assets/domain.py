"""The assets rules: what may be uploaded, what its content really is, who may read it and how.

Content is inspected (`media`), never trusted by name or declared type: uploads are images (PNG,
JPEG, WebP) or audio (WAV, MP3, FLAC, OGG); generated results may also be MP4 video.
"""

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import BinaryIO
from urllib.parse import parse_qsl

from magicpixels.core import idempotency
from magicpixels.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from magicpixels.core.ids import new_id
from magicpixels.services.assets import media
from magicpixels.services.assets.media import Content

MIB = 1024 * 1024
MIN_URL_SECONDS = 60
MAX_URL_SECONDS = 86_400


class Kind(StrEnum):
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"


class Origin(StrEnum):
    UPLOAD = "upload"
    GENERATED = "generated"


SIZE_LIMITS = {
    Kind.IMAGE: 20 * MIB,
    Kind.AUDIO: 50 * MIB,
    # Generated only: 30 s of H.264 at up to 2048 px fits well within this.
    Kind.VIDEO: 200 * MIB,
}
_MEDIA_KINDS = {
    **dict.fromkeys(("image/png", "image/jpeg", "image/webp"), Kind.IMAGE),
    **dict.fromkeys(("audio/wav", "audio/mpeg", "audio/flac", "audio/ogg"), Kind.AUDIO),
    "video/mp4": Kind.VIDEO,
}
# What a file of each kind must be, as the refusals say it.
_ACCEPTED = {
    Kind.IMAGE: "a PNG, JPEG or WebP image",
    Kind.AUDIO: "WAV, MP3, FLAC or OGG audio",
    Kind.VIDEO: "an MP4 video",
}
_ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-flac": "audio/flac",
    "application/ogg": "audio/ogg",
}
_EXPIRES = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class UploadPlan:
    """An upload whose header passed the rules, before any byte was read."""

    account_id: str
    livemode: bool
    kind: Kind
    content_type: str
    origin: Origin
    job_id: str | None
    declared_size: int | None
    max_bytes: int
    idempotency_key: str = ""


@dataclass(frozen=True)
class AssetRecord:
    id: str
    account_id: str
    livemode: bool
    kind: Kind
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None
    height: int | None
    duration_seconds: float | None
    origin: Origin
    job_id: str | None
    blob_key: str
    created_at: datetime


def plan_upload(
    *,
    account_id: str,
    livemode: bool,
    content_type: str,
    origin: Origin | None,
    job_id: str,
    declared_size: int | None,
    idempotency_key: str = "",
) -> UploadPlan:
    _require(account_id, "account_id")
    _require(content_type, "content_type")
    idempotency.check_key(idempotency_key)
    if origin is None:
        raise InvalidArgument("PARAMETER_INVALID", "unknown asset origin", param="origin")
    canonical = canonical_content_type(content_type)
    kind = kind_of(canonical)
    _ensure_accepted(kind, origin)
    if declared_size is not None:
        _ensure_declared_size(kind, declared_size)
    return UploadPlan(
        account_id=account_id,
        livemode=livemode,
        kind=kind,
        content_type=canonical,
        origin=origin,
        job_id=_job_of(origin, job_id),
        declared_size=declared_size,
        max_bytes=SIZE_LIMITS[kind],
        idempotency_key=idempotency_key,
    )


def upload_claim(plan: UploadPlan, sha256: str) -> idempotency.Claim | None:
    """The claim an upload makes on its Idempotency-Key, once its bytes are known: the same
    bytes with the same type, mode and origin are the same request."""
    request = f"{plan.livemode}\n{plan.content_type}\n{plan.origin}\n{plan.job_id}\n{sha256}"
    return idempotency.claim(plan.idempotency_key, request.encode())


def _require(value: str, param: str) -> None:
    if not value:
        raise InvalidArgument("PARAMETER_MISSING", f"{param} is required", param=param)


def canonical_content_type(declared: str) -> str:
    """The media type without parameters, lowercased, with common aliases resolved."""
    essence = declared.split(";", 1)[0].strip().lower()
    return _ALIASES.get(essence, essence)


def kind_of(content_type: str) -> Kind:
    try:
        return _MEDIA_KINDS[content_type]
    except KeyError:
        raise media.unsupported(
            f"{content_type} is not a supported type: upload {_ACCEPTED[Kind.IMAGE]} "
            f"or {_ACCEPTED[Kind.AUDIO]}"
        ) from None


def _ensure_accepted(kind: Kind, origin: Origin) -> None:
    if kind is Kind.VIDEO and origin is Origin.UPLOAD:
        raise media.unsupported(
            f"video is only generated, not uploaded: upload {_ACCEPTED[Kind.IMAGE]} "
            f"or {_ACCEPTED[Kind.AUDIO]}"
        )


def _ensure_declared_size(kind: Kind, declared_size: int) -> None:
    if declared_size < 0:
        raise InvalidArgument(
            "PARAMETER_INVALID", "size_bytes must not be negative", param="size_bytes"
        )
    if declared_size > SIZE_LIMITS[kind]:
        raise _too_large(kind, SIZE_LIMITS[kind])


def _job_of(origin: Origin, job_id: str) -> str | None:
    if origin is Origin.UPLOAD:
        if job_id:
            raise InvalidArgument(
                "PARAMETER_INVALID", "only a generated asset has a job_id", param="job_id"
            )
        return None
    _require(job_id, "job_id")
    return job_id


def ensure_within_limit(plan: UploadPlan, size: int) -> None:
    """Checks the bytes received so far, while they stream in."""
    if size > plan.max_bytes:
        raise _too_large(plan.kind, plan.max_bytes)


def _too_large(kind: Kind, limit: int) -> InvalidArgument:
    return InvalidArgument("PAYLOAD_TOO_LARGE", f"{kind} files are limited to {limit / MIB:g} MiB")


def ensure_received(plan: UploadPlan, size: int) -> None:
    """Checks the number of bytes that arrived against the declared size."""
    if size == 0:
        raise media.unsupported("the file is empty")
    if plan.declared_size is not None and size != plan.declared_size:
        raise InvalidArgument(
            "PARAMETER_INVALID",
            f"{size} bytes arrived but size_bytes declared {plan.declared_size}",
            param="size_bytes",
        )


def inspect_content(plan: UploadPlan, file: BinaryIO) -> Content:
    """What the stored bytes are, which must be what was declared; blocking (it decodes)."""
    found = media.sniff(file)
    if found is None:
        raise media.unsupported(f"the file is not {_ACCEPTED[plan.kind]}")
    if found != plan.content_type:
        raise FailedPrecondition(
            "CONTENT_MISMATCH",
            f"the file is {media.FORMAT_NAMES[found]} but was declared as {plan.content_type}",
        )
    return media.probe(found, file)


def new_asset(
    plan: UploadPlan, content: Content, *, blob_key: str, size: int, sha256: str, now: datetime
) -> AssetRecord:
    return AssetRecord(
        id=new_id("asset"),
        account_id=plan.account_id,
        livemode=plan.livemode,
        kind=plan.kind,
        content_type=content.content_type,
        size_bytes=size,
        sha256=sha256,
        width=content.width,
        height=content.height,
        duration_seconds=content.duration_seconds,
        origin=plan.origin,
        job_id=plan.job_id,
        blob_key=blob_key,
        created_at=now,
    )


def visible(record: AssetRecord | None, asset_id: str, account_id: str) -> AssetRecord:
    """The asset if the account owns it; another account's asset does not exist for it."""
    if record is None or record.account_id != account_id:
        raise asset_not_found(asset_id)
    return record


def asset_not_found(asset_id: str) -> NotFound:
    return NotFound("ASSET_NOT_FOUND", f"no asset {asset_id}")


def byte_range(size: int, offset: int, length: int) -> tuple[int, int]:
    """The (offset, length) to read; a length of 0 reads to the end, a longer one is clipped."""
    if offset < 0 or length < 0 or offset >= size:
        raise InvalidArgument(
            "RANGE_NOT_SATISFIABLE",
            f"the range from byte {offset} ({length} bytes) is outside the {size} bytes",
            param="range",
        )
    remaining = size - offset
    return offset, min(length, remaining) if length else remaining


def url_expiry(now: datetime, expires_in: int) -> int:
    """The unix time a URL signed now for `expires_in` seconds expires at."""
    if not MIN_URL_SECONDS <= expires_in <= MAX_URL_SECONDS:
        raise InvalidArgument(
            "PARAMETER_INVALID",
            f"expires_in must be between {MIN_URL_SECONDS} and {MAX_URL_SECONDS} seconds",
            param="expires_in",
        )
    return int(now.timestamp()) + expires_in


def signed_query(key: bytes, asset_id: str, expires: int) -> str:
    return f"expires={expires}&signature={_signature(key, asset_id, expires)}"


def verify_signed_query(key: bytes, asset_id: str, query: str, now: datetime) -> None:
    expires, signature = _parse_signed_query(query)
    if not hmac.compare_digest(signature.encode(), _signature(key, asset_id, expires).encode()):
        raise _signature_invalid()
    if now.timestamp() >= expires:
        raise FailedPrecondition("URL_EXPIRED", "the signed URL has expired")


def _signature(key: bytes, asset_id: str, expires: int) -> str:
    digest = hmac.new(key, f"{asset_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _parse_signed_query(query: str) -> tuple[int, str]:
    """Exactly one `expires` (unix seconds) and one `signature`, nothing else."""
    try:
        pairs = parse_qsl(query, strict_parsing=True, max_num_fields=2)
    except ValueError:
        raise _signature_invalid() from None
    fields = dict(pairs)
    if len(pairs) != 2 or fields.keys() != {"expires", "signature"}:
        raise _signature_invalid()
    if not _EXPIRES.fullmatch(fields["expires"]):
        raise _signature_invalid()
    return int(fields["expires"]), fields["signature"]


def _signature_invalid() -> PermissionDenied:
    return PermissionDenied("URL_SIGNATURE_INVALID", "the URL signature is missing or invalid")
