"""The assets tables and their queries.

`blobs` counts the live assets that reference each blob. Every change of a count upserts the
blob's row, which locks it until the transaction ends (SQLite serialises all writers anyway):
that lock is what keeps a blob from being removed while an upload is claiming it.
"""

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    exists,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from magicpixels.core import idempotency
from magicpixels.core.idempotency import WINDOW, Claim
from magicpixels.core.timestamps import as_utc, utcnow
from magicpixels.services.assets.domain import AssetRecord, Kind, Origin

metadata = MetaData()

assets = Table(
    "assets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("width", Integer),
    Column("height", Integer),
    Column("duration_seconds", Float),
    Column("origin", String(16), nullable=False),
    Column("job_id", String(40)),
    Column("blob_key", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Index("ix_assets_account_listing", "account_id", "livemode", "id"),
)

blobs = Table(
    "blobs",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("ref_count", BigInteger, nullable=False),
)

# The Idempotency-Keys of the last 24 hours' uploads, each with the asset it made.
idempotency_keys = Table(
    "asset_idempotency_keys",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),  # sha256, hex
    Column("asset_id", String(40), ForeignKey("assets.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_asset_idempotency_keys_created_at", "created_at"),
)

_UPSERTS: dict[str, Callable[[Table], Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


async def insert_asset(connection: AsyncConnection, record: AssetRecord) -> None:
    await connection.execute(assets.insert().values(asdict(record)))


async def find_asset(connection: AsyncConnection, asset_id: str) -> AssetRecord | None:
    """The asset unless it was deleted, whoever owns it."""
    query = select(assets).where(assets.c.id == asset_id, assets.c.deleted_at.is_(None))
    row = (await connection.execute(query)).one_or_none()
    return None if row is None else _record(row)


async def list_assets(
    connection: AsyncConnection, account_id: str, livemode: bool, limit: int, after: str | None
) -> list[AssetRecord]:
    """Live assets of the account and mode, newest first, older than the asset `after`."""
    query = (
        select(assets)
        .where(
            assets.c.account_id == account_id,
            assets.c.livemode == livemode,
            assets.c.deleted_at.is_(None),
        )
        .order_by(assets.c.id.desc())
        .limit(limit)
    )
    if after:
        query = query.where(assets.c.id < after)
    return [_record(row) for row in await connection.execute(query)]


async def mark_deleted(
    connection: AsyncConnection, asset_id: str, account_id: str, now: datetime
) -> str | None:
    """Soft-deletes the account's live asset and returns its blob key, or None if there was none."""
    statement = (
        update(assets)
        .where(
            assets.c.id == asset_id,
            assets.c.account_id == account_id,
            assets.c.deleted_at.is_(None),
        )
        .values(deleted_at=now)
        .returning(assets.c.blob_key)
    )
    return (await connection.execute(statement)).scalar_one_or_none()


async def claim_key(connection: AsyncConnection, claim: Claim, record: AssetRecord) -> None:
    """Claims the Idempotency-Key for the asset (inserted before: the claim refers to it); a
    claim whose asset was deleted since is replaced, as an expired one is."""
    claims = idempotency_keys.c
    deleted = exists().where(assets.c.id == claims.asset_id, assets.c.deleted_at.is_not(None))
    await idempotency.record(
        connection,
        idempotency_keys,
        claim,
        record.created_at,
        scope={"account_id": record.account_id},
        made={"asset_id": record.id},
        stale=deleted,
    )


async def claimed(
    connection: AsyncConnection, account_id: str, key: str
) -> tuple[str, AssetRecord] | None:
    """The hash of the request that claimed the account's key, and the live asset it made."""
    query = (
        select(idempotency_keys.c.request_hash, assets)
        .join(assets, assets.c.id == idempotency_keys.c.asset_id)
        .where(
            idempotency_keys.c.account_id == account_id,
            idempotency_keys.c.key == key,
            idempotency_keys.c.created_at >= utcnow() - WINDOW,
            assets.c.deleted_at.is_(None),
        )
    )
    row = (await connection.execute(query)).one_or_none()
    return None if row is None else (row.request_hash, _record(row))


async def reference_blob(connection: AsyncConnection, key: str) -> None:
    await _add_references(connection, key, 1)


async def lock_blob(connection: AsyncConnection, key: str) -> int:
    """Locks the blob's row for the transaction and returns how many live assets reference it."""
    return await _add_references(connection, key, 0)


async def dereference_blob(connection: AsyncConnection, key: str) -> None:
    statement = update(blobs).where(blobs.c.key == key).values(ref_count=blobs.c.ref_count - 1)
    await connection.execute(statement)


async def forget_blob(connection: AsyncConnection, key: str) -> None:
    await connection.execute(delete(blobs).where(blobs.c.key == key))


async def _add_references(connection: AsyncConnection, key: str, count: int) -> int:
    insert = _UPSERTS[connection.dialect.name]
    statement = (
        insert(blobs)
        .values(key=key, ref_count=count)
        .on_conflict_do_update(
            index_elements=[blobs.c.key], set_={"ref_count": blobs.c.ref_count + count}
        )
        .returning(blobs.c.ref_count)
    )
    return (await connection.execute(statement)).scalar_one()


def _record(row: Row[Any]) -> AssetRecord:
    return AssetRecord(
        id=row.id,
        account_id=row.account_id,
        livemode=row.livemode,
        kind=Kind(row.kind),
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        width=row.width,
        height=row.height,
        duration_seconds=row.duration_seconds,
        origin=Origin(row.origin),
        job_id=row.job_id,
        blob_key=row.blob_key,
        created_at=as_utc(row.created_at),
    )
