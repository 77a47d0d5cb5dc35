"""Content-addressed blob storage: a blob's key is the sha256 of its bytes.

An upload is staged first: its bytes stream into a local draft file while they are hashed, and
the draft is inspected there. Only a draft that passed is published under its key, whole or not
at all: the local store renames it into place (temp + fsync + rename), the S3 store uploads it.
No path or object key is ever built from user input.
"""

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

# Reads go out in chunks of this size: large enough that per-message costs stay small, small
# enough that a download holds little in memory.
CHUNK_SIZE = 256 * 1024
# Incoming chunks are gathered to this size so a thread hop writes a useful amount at once.
_WRITE_BATCH = 256 * 1024
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Draft:
    """Bytes staged in a local file, not yet published."""

    path: Path
    size: int
    sha256: str

    @property
    def key(self) -> str:
        return self.sha256


class BlobMissing(LookupError):
    """No blob has the key (it was deleted, or never written)."""


class BlobStore(Protocol):
    def stage(self, chunks: AsyncIterator[bytes]) -> AbstractAsyncContextManager[Draft]:
        """The bytes as a local draft for the block; an error raised by `chunks` stages nothing."""
        ...

    async def publish(self, draft: Draft) -> None:
        """Stores the draft's bytes under its key, consuming the draft."""
        ...

    async def exists(self, key: str) -> bool: ...

    def open_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes from `offset`, in chunks of at most CHUNK_SIZE."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the blob; deleting a missing blob does nothing."""
        ...


def ensure_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"not a blob key: {key!r}")
    return key


@asynccontextmanager
async def staged(folder: Path, chunks: AsyncIterator[bytes]) -> AsyncIterator[Draft]:
    """Streams the chunks into a new file in `folder`, hashing them; the file is gone after."""
    # Made and removed in the event loop, not in a thread: a cancellation must not fall between
    # the file's creation and the cleanup that removes it. Each is one quick local system call.
    descriptor, name = tempfile.mkstemp(dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as file:
            digest, size = await _copy(chunks, file)
        yield Draft(Path(name), size, digest.hexdigest())
    finally:
        with contextlib.suppress(FileNotFoundError):  # published, so renamed
            os.unlink(name)


class LocalBlobStore:
    """Blobs as files under `root`: `<key[:2]>/<key>`, drafts in `root/tmp` (same filesystem)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._drafts = root / "tmp"
        self._drafts.mkdir(parents=True, exist_ok=True)

    def stage(self, chunks: AsyncIterator[bytes]) -> AbstractAsyncContextManager[Draft]:
        return staged(self._drafts, chunks)

    async def publish(self, draft: Draft) -> None:
        await asyncio.to_thread(self._publish, draft)

    def _publish(self, draft: Draft) -> None:
        """Renames the durable draft to its key: readers see the whole blob or none."""
        path = self._path(draft.key)
        _sync_file(draft.path)
        path.parent.mkdir(exist_ok=True)
        draft.path.replace(path)
        _sync_file(path.parent)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def open_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        try:
            file = await asyncio.to_thread(self._path(key).open, "rb")
        except FileNotFoundError:
            raise BlobMissing(key) from None
        with file:
            end = offset + length
            while offset < end:
                chunk = await asyncio.to_thread(
                    os.pread, file.fileno(), min(CHUNK_SIZE, end - offset), offset
                )
                if not chunk:
                    raise EOFError(f"blob {key} ends at byte {offset}, before byte {end}")
                offset += len(chunk)
                yield chunk

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    def _path(self, key: str) -> Path:
        return self._root / ensure_key(key)[:2] / key


async def _copy(chunks: AsyncIterator[bytes], file: BinaryIO) -> tuple["hashlib._Hash", int]:
    """Writes the chunks to the file in batches, hashing them as they go."""
    digest = hashlib.sha256()
    size = 0
    batch = bytearray()
    async for chunk in chunks:
        batch += chunk
        size += len(chunk)
        if len(batch) >= _WRITE_BATCH:
            await asyncio.to_thread(_append, file, digest, batch)
            batch.clear()
    await asyncio.to_thread(_append, file, digest, batch)
    return digest, size


def _append(file: BinaryIO, digest: "hashlib._Hash", data: bytearray) -> None:
    digest.update(data)
    file.write(data)


def _sync_file(path: Path) -> None:
    """Makes a file's bytes, or a rename in a folder, durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
