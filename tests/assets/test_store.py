from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import AssetsSettings
from magicpixels.services.assets import domain, store
from magicpixels.services.assets.domain import Content, Origin

KEY = "ab" * 32
NOW = datetime(2026, 11, 24, 6, 19, 12, 123000, tzinfo=UTC)
PLAN = domain.plan_upload(
    account_id="acct_owner",
    livemode=True,
    content_type="image/webp",
    origin=Origin.UPLOAD,
    job_id="",
    declared_size=None,
)


@pytest.fixture
async def connection(database: Any, mesh: Mesh) -> AsyncIterator[AsyncConnection]:
    engine = await open_database(
        mesh.settings,
        database.settings(AssetsSettings),
        "assets",
        "magicpixels.services.assets.migrations",
    )
    async with engine.begin() as connection:
        yield connection
    await engine.dispose()


def _record(**overrides: Any) -> domain.AssetRecord:
    record = domain.new_asset(
        PLAN, Content("image/webp", 640, 480), blob_key=KEY, size=1234, sha256=KEY, now=NOW
    )
    return replace(record, **overrides)


async def test_an_inserted_asset_reads_back_equal_until_it_is_deleted(
    connection: AsyncConnection,
) -> None:
    record = _record()
    await store.insert_asset(connection, record)

    found = await store.find_asset(connection, record.id)
    wrong_owner = await store.mark_deleted(connection, record.id, "acct_other", NOW)
    deleted = await store.mark_deleted(connection, record.id, "acct_owner", NOW)
    deleted_again = await store.mark_deleted(connection, record.id, "acct_owner", NOW)

    assert found == record
    assert (wrong_owner, deleted, deleted_again) == (None, KEY, None)
    assert await store.find_asset(connection, record.id) is None


async def test_list_filters_by_account_and_mode_and_pages_by_id(
    connection: AsyncConnection,
) -> None:
    ids = ["asset_1", "asset_2", "asset_3"]
    for asset_id in ids:
        await store.insert_asset(connection, _record(id=asset_id))
    await store.insert_asset(connection, _record(id="asset_4", livemode=False))
    await store.insert_asset(connection, _record(id="asset_5", account_id="acct_other"))

    def listed(limit: int, after: str | None) -> Any:
        return store.list_assets(connection, "acct_owner", True, limit, after)

    assert [record.id for record in await listed(10, None)] == ["asset_3", "asset_2", "asset_1"]
    assert [record.id for record in await listed(1, "asset_3")] == ["asset_2"]


async def test_blob_references_count_up_and_down(connection: AsyncConnection) -> None:
    assert await store.lock_blob(connection, KEY) == 0
    await store.reference_blob(connection, KEY)
    await store.reference_blob(connection, KEY)
    assert await store.lock_blob(connection, KEY) == 2

    await store.dereference_blob(connection, KEY)
    assert await store.lock_blob(connection, KEY) == 1

    await store.forget_blob(connection, KEY)
    assert await store.lock_blob(connection, KEY) == 0
