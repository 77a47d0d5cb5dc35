import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from magicpixels.services.assets.blobs import CHUNK_SIZE, BlobMissing, LocalBlobStore

DATA = random.Random(7).randbytes(300_000)
KEY = hashlib.sha256(DATA).hexdigest()

Files = Callable[[Path], list[Path]]


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _failing_chunks() -> AsyncIterator[bytes]:
    yield DATA[:100_000]
    yield DATA[100_000:200_000]
    raise RuntimeError("the client went away")


async def _read(store: LocalBlobStore, key: str, offset: int, length: int) -> list[bytes]:
    return [chunk async for chunk in store.open_range(key, offset, length)]


async def test_write_streams_into_a_content_addressed_file(
    tmp_path: Path, files_under: Files
) -> None:
    store = LocalBlobStore(tmp_path)

    stored = await store.write(_chunks(DATA))

    assert (stored.key, stored.sha256, stored.size) == (KEY, KEY, len(DATA))
    assert files_under(tmp_path) == [tmp_path / KEY[:2] / KEY]
    assert (tmp_path / KEY[:2] / KEY).read_bytes() == DATA


async def test_a_failed_stream_leaves_no_file(tmp_path: Path, files_under: Files) -> None:
    store = LocalBlobStore(tmp_path)

    with pytest.raises(RuntimeError, match="the client went away"):
        await store.write(_failing_chunks())

    assert files_under(tmp_path) == []


async def test_concurrent_writes_of_the_same_bytes_share_one_file(
    tmp_path: Path, files_under: Files
) -> None:
    store = LocalBlobStore(tmp_path)

    stored = await asyncio.gather(*(store.write(_chunks(DATA, 777)) for _ in range(8)))

    assert {blob.key for blob in stored} == {KEY}
    assert files_under(tmp_path) == [tmp_path / KEY[:2] / KEY]
    assert b"".join(await _read(store, KEY, 0, len(DATA))) == DATA


async def test_open_range_reads_64_kib_chunks(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    await store.write(_chunks(DATA))

    whole = await _read(store, KEY, 0, len(DATA))
    part = await _read(store, KEY, 70_000, 100_000)

    assert [len(chunk) for chunk in whole] == [CHUNK_SIZE] * 4 + [len(DATA) - 4 * CHUNK_SIZE]
    assert b"".join(whole) == DATA
    assert b"".join(part) == DATA[70_000:170_000]


async def test_open_file_gives_the_blob_as_a_seekable_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    await store.write(_chunks(DATA))

    async with store.open_file(KEY) as file:
        file.seek(len(DATA) - 10)
        tail = file.read()

    assert tail == DATA[-10:]


async def test_delete_removes_the_blob_and_ignores_a_missing_one(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    await store.write(_chunks(DATA))
    assert await store.exists(KEY)

    await store.delete(KEY)
    await store.delete(KEY)

    assert not await store.exists(KEY)
    with pytest.raises(BlobMissing):
        await _read(store, KEY, 0, 1)
    with pytest.raises(BlobMissing):
        async with store.open_file(KEY):
            pass


@pytest.mark.parametrize("key", ["../../etc/passwd", KEY.upper(), KEY[:-1], KEY + "0", ""])
async def test_a_key_that_is_not_a_sha256_never_becomes_a_path(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path)

    with pytest.raises(ValueError, match="not a blob key"):
        await store.exists(key)
    with pytest.raises(ValueError, match="not a blob key"):
        await store.delete(key)
