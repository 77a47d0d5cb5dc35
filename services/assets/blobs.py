"""Content-addressed blob storage: a blob's key is the sha256 of its bytes.

Blobs are written whole or not at all: bytes stream into a temporary file while they are hashed,
and only a complete, fsynced file is renamed to its key. No path is ever built from user input.
"""

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_SIZE = 64 * 1024
# Incoming chunks are gathered to this size so a thread hop writes a useful amount at once.
_WRITE_BATCH = 256 * 1024
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class BlobMissing(LookupError):
    """No blob has the key (it was deleted, or never written)."""


class BlobStore(Protocol):
    async def write(self, chunks: AsyncIterator[bytes]) -> StoredBlob:
        """Stores the bytes; an error raised by `chunks` stores nothing."""
        ...

    async def exists(self, key: str) -> bool: ...

    def open_file(self, key: str) -> AbstractAsyncContextManager[BinaryIO]:
        """The blob as a seekable local file, for decoders that need one."""
        ...

    def open_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes from `offset`, in chunks of at most CHUNK_SIZE."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the blob; deleting a missing blob does nothing."""
        ...


class LocalBlobStore:
    """Blobs as files under `root`: `<key[:2]>/<key>`, drafts in `root/tmp` (same filesystem)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._drafts = root / "tmp"
        self._drafts.mkdir(parents=True, exist_ok=True)

    async def write(self, chunks: AsyncIterator[bytes]) -> StoredBlob:
        descriptor, name = await asyncio.to_thread(tempfile.mkstemp, dir=self._drafts)
        draft = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as file:
                digest, size = await _copy(chunks, file)
                await asyncio.to_thread(_flush_to_disk, file)
            key = digest.hexdigest()
            await asyncio.to_thread(self._publish, draft, key)
        except BaseException:
            await asyncio.to_thread(draft.unlink, missing_ok=True)
            raise
        return StoredBlob(key, size, key)

    def _publish(self, draft: Path, key: str) -> None:
        """Renames the complete draft to its key: readers see the whole blob or none."""
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        draft.replace(path)
        _sync_directory(path.parent)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    @asynccontextmanager
    async def open_file(self, key: str) -> AsyncIterator[BinaryIO]:
        with await self._open(key) as file:
            yield file

    async def open_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        with await self._open(key) as file:
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

    async def _open(self, key: str) -> BinaryIO:
        try:
            return await asyncio.to_thread(self._path(key).open, "rb")
        except FileNotFoundError:
            raise BlobMissing(key) from None

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self._root / key[:2] / key


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


def _flush_to_disk(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _sync_directory(path: Path) -> None:
    """Makes a rename in the directory durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
