"""What each method of the clients asks of the API, shared by the sync and async clients."""

import mimetypes
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import anyio

from magicpixels_sdk._http import Call

# The most one long poll asks the API to wait (API.md: ?wait=0..60).
MAX_POLL_SECONDS = 60
_CHUNK = 1 << 20

Upload = str | os.PathLike[str] | bytes | IO[bytes]


def idempotent(key: str | None) -> dict[str, str]:
    """The Idempotency-Key header of a create: the caller's key, else a new one, so that the
    transport's retries of it never create twice."""
    return {"Idempotency-Key": key or f"mpsdk_{uuid.uuid4().hex}"}


def job_body(mode: str, prompt: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """`params` pass through as they are, so a field the API gains works without a new SDK."""
    return {"mode": mode, **({"prompt": prompt} if prompt is not None else {}), **params}


def create_job(
    mode: str,
    prompt: str | None,
    params: dict[str, Any],
    idempotency_key: str | None,
    wait: int | None,
) -> Call:
    """A key is generated when none is given, so a retried create never makes two jobs."""
    body = job_body(mode, prompt, params)
    headers = idempotent(idempotency_key)
    extra = 0.0
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
        extra = float(wait)
    return Call("POST", "/v1/jobs", json=body, headers=headers, extra_timeout=extra)


def create_account(email: str, name: str | None, idempotency_key: str | None) -> Call:
    """A key is generated when none is given: a retried signup answers the same account and
    token rather than refusing the email as taken."""
    body = {"email": email, **({"name": name} if name is not None else {})}
    headers = idempotent(idempotency_key)
    return Call("POST", "/v1/accounts", json=body, headers=headers)


def rotate_webhook_secret(grace_period_seconds: int | None) -> Call:
    body = {} if grace_period_seconds is None else {"grace_period_seconds": grace_period_seconds}
    return Call("POST", "/v1/account/webhook_secret/rotate", json=body)


def create_api_key(
    name: str,
    mode: str,
    scopes: list[str] | None,
    expires_at: datetime | None,
    idempotency_key: str | None,
) -> Call:
    body: dict[str, Any] = {"name": name, "mode": mode}
    if scopes is not None:
        body["scopes"] = scopes
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    headers = idempotent(idempotency_key)
    return Call("POST", "/v1/api_keys", json=body, headers=headers)


def quote_job(mode: str, prompt: str | None, params: dict[str, Any]) -> Call:
    """The create's body, priced: a quote creates and holds nothing, so it needs no
    idempotency key and a failed connection may be retried."""
    return Call("POST", "/v1/jobs/quote", json=job_body(mode, prompt, params), changes_nothing=True)


def get_job(job_id: str, wait: int | None = None) -> Call:
    params = {"wait": wait} if wait else None
    return Call("GET", f"/v1/jobs/{job_id}", params=params, extra_timeout=float(wait or 0))


def list_page(path: str, limit: int, starting_after: str | None, **filters: Any) -> Call:
    return Call("GET", path, params={"limit": limit, "starting_after": starting_after, **filters})


def cancel_job(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{job_id}/cancel")


def job_events(job_id: str) -> Call:
    # An event stream has no end to wait for; its own keep-alives arrive every 15 s.
    return Call("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})


def poll_seconds(remaining: float | None) -> int:
    """The next long poll's `?wait`: at most 60 s, at least 1, within what remains."""
    if remaining is None:
        return MAX_POLL_SECONDS
    return max(1, min(MAX_POLL_SECONDS, int(remaining + 0.999)))


def upload_asset(file: Upload, content_type: str | None, asynchronous: bool) -> Call:
    """The raw bytes as the body with their type: named by the caller, else guessed from the
    file's name, else from its first bytes (the API verifies them either way)."""
    if isinstance(file, bytes):
        kind = content_type or sniff(file)
        return _upload(lambda: file, kind, None)
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        kind = content_type or _by_name(path.name) or _sniff_file(path)
        stream = _read_path_async if asynchronous else _read_path
        return _upload(lambda: stream(path), kind, path.stat().st_size)
    kind = content_type or _by_name(str(getattr(file, "name", "")))
    if not file.seekable():  # its size is unknown, and it can be sent only once
        unknown = kind or "application/octet-stream"
        call = _upload(lambda: _read_file(file, None, asynchronous), unknown, None)
        call.replayable = False
        return call
    start = file.tell()
    if kind is None:  # an in-memory file, or one without a telling name: its first bytes
        kind = sniff(file.read(16))
        file.seek(start)
    size = file.seek(0, os.SEEK_END) - start
    return _upload(lambda: _read_file(file, start, asynchronous), kind, size)


def _upload(content: Any, content_type: str, size: int | None) -> Call:
    """A declared size lets the API refuse a file over its limits before it is sent; the key
    lets a failed connection be retried without making a second asset."""
    headers = {"Content-Type": content_type, **idempotent(None)}
    if size is not None:
        headers["Content-Length"] = str(size)
    return Call("POST", "/v1/assets", headers=headers, content=content)


def _by_name(name: str) -> str | None:
    return mimetypes.guess_type(name)[0] if name else None


_SIGNATURES = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"fLaC", "audio/flac"),
    (b"OggS", "audio/ogg"),
    (b"ID3", "audio/mpeg"),
)


def sniff(head: bytes) -> str:
    """The type of the formats the API accepts, from their first bytes."""
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:1] == b"\xff" and len(head) > 1 and head[1] & 0xE0 == 0xE0:
        return "audio/mpeg"
    return "application/octet-stream"


def _sniff_file(path: Path) -> str:
    with path.open("rb") as f:
        return sniff(f.read(16))


def _read_path(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


async def _read_path_async(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await anyio.to_thread.run_sync(f.read, _CHUNK):
            yield chunk


def _read_file(file: IO[bytes], start: int | None, asynchronous: bool) -> Any:
    """A caller's file from where it stood (again on a retry, when it can seek)."""
    if start is not None:
        file.seek(start)

    def chunks() -> Iterator[bytes]:
        while chunk := file.read(_CHUNK):
            yield chunk

    async def async_chunks() -> AsyncIterator[bytes]:
        while chunk := await anyio.to_thread.run_sync(file.read, _CHUNK):
            yield chunk

    return async_chunks() if asynchronous else chunks()
