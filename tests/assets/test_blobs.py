"""The blob store contract, on the local folder and on an S3 bucket over HTTP alike."""

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from magicpixels.core.settings import AssetsSettings
from magicpixels.services.assets.blobs import CHUNK_SIZE, BlobMissing, BlobStore, Draft
from magicpixels.services.assets.server import open_blob_store
from tests.assets.stores import StoreUnderTest, on_every_store

DATA = random.Random(7).randbytes(3 * CHUNK_SIZE + 12_345)
KEY = hashlib.sha256(DATA).hexdigest()


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _failing_chunks() -> AsyncIterator[bytes]:
    yield DATA[:100_000]
    yield DATA[100_000:200_000]
    raise RuntimeError("the client went away")


@pytest.fixture
async def store(blob_store: StoreUnderTest, tmp_path: Path) -> BlobStore:
    return await open_blob_store(AssetsSettings(**blob_store.settings()), tmp_path)


async def _put(store: BlobStore, data: bytes, chunk_size: int = 1000) -> Draft:
    async with store.stage(_chunks(data, chunk_size)) as draft:
        await store.publish(draft)
    return draft


async def _read(store: BlobStore, key: str, offset: int, length: int) -> list[bytes]:
    return [chunk async for chunk in store.open_range(key, offset, length)]


@on_every_store
async def test_stage_streams_into_a_hashed_draft_that_is_gone_after_the_block(
    store: BlobStore, blob_store: StoreUnderTest
) -> None:
    async with store.stage(_chunks(DATA)) as draft:
        staged = draft.path.read_bytes()
        during = blob_store.leftovers()

    assert (draft.key, draft.sha256, draft.size) == (KEY, KEY, len(DATA))
    assert staged == DATA
    assert during == [str(draft.path)]
    assert blob_store.leftovers() == []


@on_every_store
async def test_a_failed_stream_or_a_failed_block_leaves_nothing(
    store: BlobStore, blob_store: StoreUnderTest
) -> None:
    with pytest.raises(RuntimeError, match="the client went away"):
        async with store.stage(_failing_chunks()):
            pass
    with pytest.raises(ValueError, match="refused"):
        async with store.stage(_chunks(DATA)):
            raise ValueError("refused")

    assert blob_store.leftovers() == []


@on_every_store
async def test_publish_stores_the_draft_under_its_key_and_consumes_it(
    store: BlobStore, blob_store: StoreUnderTest
) -> None:
    draft = await _put(store, DATA)

    assert await store.exists(KEY)
    assert blob_store.blobs() == [KEY]
    assert not draft.path.exists()
    assert b"".join(await _read(store, KEY, 0, len(DATA))) == DATA


@on_every_store
async def test_concurrent_puts_of_the_same_bytes_store_one_blob(
    store: BlobStore, blob_store: StoreUnderTest
) -> None:
    drafts = await asyncio.gather(*(_put(store, DATA, 777) for _ in range(6)))

    assert {draft.key for draft in drafts} == {KEY}
    assert blob_store.blobs() == [KEY]
    assert blob_store.drafts() == []
    assert b"".join(await _read(store, KEY, 0, len(DATA))) == DATA


@on_every_store
async def test_open_range_reads_chunks_of_at_most_chunk_size(store: BlobStore) -> None:
    await _put(store, DATA)

    whole = await _read(store, KEY, 0, len(DATA))
    part = await _read(store, KEY, 70_000, CHUNK_SIZE + 10)

    assert [len(chunk) for chunk in whole] == [CHUNK_SIZE] * 3 + [12_345]
    assert b"".join(whole) == DATA
    assert [len(chunk) for chunk in part] == [CHUNK_SIZE, 10]
    assert b"".join(part) == DATA[70_000 : 70_000 + CHUNK_SIZE + 10]


@on_every_store
async def test_delete_removes_the_blob_and_ignores_a_missing_one(
    store: BlobStore, blob_store: StoreUnderTest
) -> None:
    await _put(store, DATA)

    await store.delete(KEY)
    await store.delete(KEY)

    assert not await store.exists(KEY)
    assert blob_store.leftovers() == []
    with pytest.raises(BlobMissing):
        await _read(store, KEY, 0, 1)


@on_every_store
@pytest.mark.parametrize("key", ["../../etc/passwd", KEY.upper(), KEY[:-1], KEY + "0", ""])
async def test_a_key_that_is_not_a_sha256_never_becomes_a_path_or_an_object_key(
    store: BlobStore, key: str
) -> None:
    with pytest.raises(ValueError, match="not a blob key"):
        await store.exists(key)
    with pytest.raises(ValueError, match="not a blob key"):
        await store.delete(key)
    with pytest.raises(ValueError, match="not a blob key"):
        await _read(store, key, 0, 1)


async def test_the_s3_store_needs_a_bucket_that_exists(s3_endpoint: str, tmp_path: Path) -> None:
    base = {"blob_store": "s3", "s3_endpoint_url": s3_endpoint, "s3_region": "us-east-1"}
    credentials = {"s3_access_key_id": "test-key", "s3_secret_access_key": "test-secret"}

    with pytest.raises(ValueError, match="MP_ASSETS_S3_BUCKET is required"):
        await open_blob_store(AssetsSettings(**base), tmp_path)
    with pytest.raises(RuntimeError, match="the S3 bucket 'no-such-bucket' cannot be used"):
        await open_blob_store(
            AssetsSettings(**base, **credentials, s3_bucket="no-such-bucket"), tmp_path
        )
