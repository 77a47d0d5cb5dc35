import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from magicpixels.core import idempotency
from magicpixels.core.errors import Aborted, AlreadyExists, DomainError, InvalidArgument
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import AssetsSettings
from magicpixels.core.timestamps import utcnow
from magicpixels.services.assets import catalog as catalog_module
from magicpixels.services.assets import domain, store
from magicpixels.services.assets.blobs import LocalBlobStore
from magicpixels.services.assets.catalog import Catalog
from magicpixels.services.assets.domain import Origin
from magicpixels.services.assets.server import open_blob_store
from tests.assets.stores import StoreUnderTest, on_every_store

ACCOUNT = "acct_owner"
HEADER: dict[str, Any] = {
    "account_id": ACCOUNT,
    "livemode": False,
    "content_type": "image/png",
    "origin": Origin.UPLOAD,
    "job_id": "",
    "declared_size": None,
}
PLAN = domain.plan_upload(**HEADER)


class _RemovedBeforeClaim(LocalBlobStore):
    """A store whose blob is removed, as by a concurrent delete, just before an upload claims it."""

    async def exists(self, key: str) -> bool:
        await self.delete(key)
        return await super().exists(key)


@pytest.fixture
async def engine(database: Any, mesh: Mesh) -> AsyncIterator[Any]:
    engine = await open_database(
        mesh.settings,
        database.settings(AssetsSettings),
        "assets",
        "magicpixels.services.assets.migrations",
    )
    yield engine
    await engine.dispose()


@pytest.fixture
async def catalog(engine: Any, blob_store: StoreUnderTest, tmp_path: Path) -> Catalog:
    return Catalog(engine, await open_blob_store(AssetsSettings(**blob_store.settings()), tmp_path))


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _content(catalog: Catalog, record: domain.AssetRecord) -> bytes:
    return b"".join([chunk async for chunk in catalog.read(record, 0, record.size_bytes)])


@on_every_store
async def test_a_stream_over_the_limit_stops_and_stores_nothing(
    catalog: Catalog, blob_store: StoreUnderTest
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await catalog.upload(replace(PLAN, max_bytes=5000), _chunks(bytes(5001)))

    assert caught.value.reason == "PAYLOAD_TOO_LARGE"
    assert blob_store.leftovers() == []


@on_every_store
async def test_an_upload_canceled_midway_leaves_nothing(
    catalog: Catalog, blob_store: StoreUnderTest, encode_image: Any
) -> None:
    data = encode_image("PNG")
    halfway = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield data[:5000]
        halfway.set()
        await asyncio.Event().wait()

    upload = asyncio.create_task(catalog.upload(PLAN, stalling()))
    await halfway.wait()
    upload.cancel()

    with pytest.raises(asyncio.CancelledError):
        await upload
    assert blob_store.leftovers() == []
    assert await catalog.list_assets(ACCOUNT, False, 10, None) == []


async def test_an_upload_whose_blob_vanishes_before_its_claim_is_aborted_and_not_recorded(
    engine: Any, catalog: Catalog, tmp_path: Path, encode_image: Any
) -> None:
    data = encode_image("PNG")

    with pytest.raises(Aborted) as caught:
        await Catalog(engine, _RemovedBeforeClaim(tmp_path / "racing")).upload(PLAN, _chunks(data))
    listed = await catalog.list_assets(ACCOUNT, False, 10, None)
    again, _ = await catalog.upload(PLAN, _chunks(data))

    assert caught.value.reason == "UPLOAD_CONFLICT"
    assert listed == []
    assert await catalog.list_assets(ACCOUNT, False, 10, None) == [again]
    assert await _content(catalog, again) == data


@on_every_store
async def test_deletes_racing_uploads_of_the_same_bytes_never_strand_an_asset(
    catalog: Catalog, blob_store: StoreUnderTest, encode_image: Any
) -> None:
    """Each upload either keeps the shared blob alive or is refused, never recorded without it."""
    data = encode_image("PNG", (64, 64))

    for _ in range(5):
        victim, _ = await catalog.upload(PLAN, _chunks(data))
        outcomes = await asyncio.gather(
            catalog.delete(victim.id, ACCOUNT),
            *(catalog.upload(PLAN, _chunks(data, 500)) for _ in range(3)),
            return_exceptions=True,
        )
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert all(isinstance(error, Aborted) for error in errors), errors

    live = await catalog.list_assets(ACCOUNT, False, 100, None)
    assert [await _content(catalog, record) for record in live] == [data] * len(live)
    for record in live:
        await catalog.delete(record.id, ACCOUNT)
    assert blob_store.leftovers() == []


async def test_get_hides_other_accounts_and_get_signed_does_not(
    catalog: Catalog, encode_image: Any
) -> None:
    record, _ = await catalog.upload(PLAN, _chunks(encode_image("PNG")))

    assert await catalog.get(record.id, ACCOUNT) == record
    assert await catalog.get_signed(record.id) == record
    with pytest.raises(DomainError, match=f"no asset {record.id}"):
        await catalog.get(record.id, "acct_other")


# Idempotency-Key: the same bytes sent again answer the first asset; nothing else is recorded.
KEYED = replace(PLAN, idempotency_key="upload-1")


async def test_an_upload_repeated_with_its_idempotency_key_answers_the_first_asset(
    catalog: Catalog, encode_image: Any
) -> None:
    data = encode_image("PNG")

    first, first_replayed = await catalog.upload(KEYED, _chunks(data))
    again, again_replayed = await catalog.upload(KEYED, _chunks(data, 700))
    with pytest.raises(AlreadyExists) as other_bytes:
        await catalog.upload(KEYED, _chunks(encode_image("PNG", (32, 32))))
    with pytest.raises(AlreadyExists) as other_mode:
        await catalog.upload(replace(KEYED, livemode=True), _chunks(data))

    assert (first_replayed, again_replayed) == (False, True)
    assert again == first
    assert other_bytes.value.reason == other_mode.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await catalog.list_assets(ACCOUNT, False, 10, None) == [first]
    assert await catalog.list_assets(ACCOUNT, True, 10, None) == []


@on_every_store
async def test_concurrent_uploads_with_one_key_record_one_asset_and_leave_no_blob_behind(
    catalog: Catalog, blob_store: StoreUnderTest, encode_image: Any
) -> None:
    """Five uploads of the same bytes and three of other bytes, all with one key, at once: one
    asset, which every upload of its bytes answers; the others are refused and stored nothing."""
    data = encode_image("PNG", (64, 64))
    others = [encode_image("PNG", (16 + size, 16)) for size in range(3)]

    outcomes = await asyncio.gather(
        *(catalog.upload(KEYED, _chunks(data, 500)) for _ in range(5)),
        *(catalog.upload(KEYED, _chunks(other, 500)) for other in others),
        return_exceptions=True,
    )

    answers = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
    refusals = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    live = await catalog.list_assets(ACCOUNT, False, 100, None)
    assert len(live) == 1
    assert {record for record, _ in answers} == {live[0]}
    assert sorted(replayed for _, replayed in answers) == [False] + [True] * (len(answers) - 1)
    assert all(isinstance(error, AlreadyExists) for error in refusals), refusals
    assert len(answers) + len(refusals) == 8
    await catalog.delete(live[0].id, ACCOUNT)
    assert blob_store.leftovers() == []


async def test_an_idempotency_key_is_free_again_once_its_asset_is_deleted_or_its_day_is_over(
    engine: Any, catalog: Catalog, encode_image: Any
) -> None:
    data = encode_image("PNG")
    first, _ = await catalog.upload(KEYED, _chunks(data))
    await catalog.delete(first.id, ACCOUNT)

    after_delete, replayed_after_delete = await catalog.upload(KEYED, _chunks(data))
    await idempotency.forget(engine, store.idempotency_keys, utcnow() + timedelta(seconds=1))
    after_window, replayed_after_window = await catalog.upload(KEYED, _chunks(data))

    assert (replayed_after_delete, replayed_after_window) == (False, False)
    assert len({first.id, after_delete.id, after_window.id}) == 3


def test_an_idempotency_key_over_255_characters_is_refused_before_any_byte() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.plan_upload(**HEADER, idempotency_key="k" * 256)

    assert caught.value.param == "idempotency_key"


async def test_uploads_decode_at_most_max_decodes_at_once(
    catalog: Catalog, encode_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode holds its image whole (up to 160 MB): a security review's 12 parallel uploads
    of a 40-megapixel PNG took 800 MB more. The others wait, staged on disk."""
    running, most = 0, 0
    lock = threading.Lock()
    inspect = catalog_module._inspect

    def counted(plan: Any, path: Path) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)  # long enough for the other uploads to reach their decode
        try:
            return inspect(plan, path)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(catalog_module, "_inspect", counted)
    images = [encode_image("PNG", (64 + 8 * i, 64)) for i in range(6)]

    uploaded = await asyncio.gather(*(catalog.upload(PLAN, _chunks(data)) for data in images))

    assert len({record.id for record, _ in uploaded}) == 6
    assert most <= catalog_module.MAX_DECODES
