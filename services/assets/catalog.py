"""Assets and their blobs kept consistent: the one place that changes both.

Assets with the same bytes share one blob. An upload stages its bytes, inspects them, publishes
the blob, then claims it: it counts a reference and inserts the asset in one transaction, and
checks, under the blob's row lock, that the blob is still there. A blob is removed only under
that same lock, when no live asset references it. So no live asset ever loses its bytes; an
upload that loses the race to the removal of identical bytes is refused (ABORTED) and can simply
be sent again. A refused upload never reaches the store.

An upload's Idempotency-Key is claimed in that same transaction, once the bytes are known: an
upload that finds its key claimed by the same bytes records nothing and answers the asset the
first one made (the blob, the same, stays referenced by it).
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core import idempotency
from magicpixels.core.errors import Aborted
from magicpixels.core.timestamps import utcnow
from magicpixels.services.assets import domain, store
from magicpixels.services.assets.blobs import BlobMissing, BlobStore
from magicpixels.services.assets.domain import AssetRecord, Content, UploadPlan

# Uploads decoded at once: decoding an image holds it whole (up to 40 megapixels, 160 MB as
# RGBA), so many uploads at once must not multiply that. The others wait, staged on disk. Their
# own threads, not a semaphore around to_thread: a cancelled upload's decode runs on, and would
# give its place to another while it still held its memory.
MAX_DECODES = 2
_DECODER = ThreadPoolExecutor(MAX_DECODES, thread_name_prefix="decode")


class Catalog:
    def __init__(self, engine: AsyncEngine, blobs: BlobStore) -> None:
        self._engine = engine
        self._blobs = blobs

    async def upload(
        self, plan: UploadPlan, chunks: AsyncIterator[bytes]
    ) -> tuple[AssetRecord, bool]:
        """Stages, validates, stores and records the bytes; a refused upload leaves nothing.
        With an Idempotency-Key claimed by the same upload already, the asset that one made,
        and True: this one is then not recorded."""
        async with self._blobs.stage(_within_limit(plan, chunks)) as draft:
            domain.ensure_received(plan, draft.size)
            loop = asyncio.get_running_loop()
            content = await loop.run_in_executor(_DECODER, _inspect, plan, draft.path)
            record = domain.new_asset(
                plan,
                content,
                blob_key=draft.key,
                size=draft.size,
                sha256=draft.sha256,
                now=utcnow(),
            )
            claim = domain.upload_claim(plan, draft.sha256)
            try:
                await _to_the_end(self._blobs.publish(draft))
                earlier = await self._claim(record, claim)
            except BaseException:  # cancellation included: the blob must not be left unreferenced
                await self._release(record.blob_key)
                raise
        if earlier is None:
            return record, False
        await self._release(record.blob_key)  # kept: the earlier asset has the same bytes
        return earlier, True

    async def get(self, asset_id: str, account_id: str) -> AssetRecord:
        return domain.visible(await self._find(asset_id), asset_id, account_id)

    async def get_signed(self, asset_id: str) -> AssetRecord:
        """The asset whoever owns it: only for a URL whose signature was verified."""
        record = await self._find(asset_id)
        if record is None:
            raise domain.asset_not_found(asset_id)
        return record

    async def list_assets(
        self, account_id: str, livemode: bool, limit: int, after: str | None
    ) -> list[AssetRecord]:
        async with self._engine.connect() as connection:
            return await store.list_assets(connection, account_id, livemode, limit, after)

    async def read(self, record: AssetRecord, offset: int, length: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._blobs.open_range(record.blob_key, offset, length):
                yield chunk
        except BlobMissing:  # deleted since it was looked up
            raise domain.asset_not_found(record.id) from None

    async def delete(self, asset_id: str, account_id: str) -> None:
        async with self._engine.begin() as connection:
            key = await store.mark_deleted(connection, asset_id, account_id, utcnow())
            if key is None:
                raise domain.asset_not_found(asset_id)
            await store.dereference_blob(connection, key)
        await self._release(key)

    async def _find(self, asset_id: str) -> AssetRecord | None:
        async with self._engine.connect() as connection:
            return await store.find_asset(connection, asset_id)

    async def _claim(
        self, record: AssetRecord, claim: idempotency.Claim | None
    ) -> AssetRecord | None:
        """Records the asset as the blob's new reference, and its claim; what the claim's key
        made instead, when it was claimed already."""
        try:
            async with self._engine.begin() as connection:
                await store.reference_blob(connection, record.blob_key)
                await store.insert_asset(connection, record)
                if claim is not None:
                    await store.claim_key(connection, claim, record)
                if not await self._blobs.exists(record.blob_key):
                    raise _upload_conflict()
        except IntegrityError:
            if claim is None:
                raise
            return await self._claimed(record.account_id, claim)
        return None

    async def _claimed(self, account_id: str, claim: idempotency.Claim) -> AssetRecord:
        """The asset the key made, if this is the same upload."""
        async with self._engine.connect() as connection:
            found = await store.claimed(connection, account_id, claim.key)
        if found is None:  # its asset was deleted meanwhile: the key is being freed
            raise idempotency.key_in_use()
        request_hash, record = found
        idempotency.check_same_request(claim, request_hash)
        return record

    async def _release(self, key: str) -> None:
        """Removes the blob if no live asset references it."""
        async with self._engine.begin() as connection:
            if await store.lock_blob(connection, key) == 0:
                await self._blobs.delete(key)
                await store.forget_blob(connection, key)


async def _within_limit(plan: UploadPlan, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        domain.ensure_within_limit(plan, received)
        yield chunk


def _inspect(plan: UploadPlan, path: Path) -> Content:
    with path.open("rb") as file:
        return domain.inspect_content(plan, file)


async def _to_the_end(work: Awaitable[None]) -> None:
    """Runs `work` to its end even when the caller is canceled meanwhile (which is then raised):
    a publish cut short in the middle could leave a blob that nothing releases."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _upload_conflict() -> Aborted:
    return Aborted(
        "UPLOAD_CONFLICT",
        "identical bytes were being deleted while this upload stored them: send it again",
    )
