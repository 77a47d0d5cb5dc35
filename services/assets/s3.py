"""Blobs as objects of an S3-compatible bucket (AWS S3, MinIO, Ceph, R2...), keyed by sha256.

boto3 blocks, so each call runs in a thread. A draft is uploaded from its local file in parts
read as they are sent, and a download is read in chunks: no blob is ever held whole in memory.
"""

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from magicpixels.core.errors import SetupError
from magicpixels.core.settings import AssetsSettings
from magicpixels.services.assets.blobs import CHUNK_SIZE, BlobMissing, Draft, ensure_key, staged

# Parts of 8 MiB, two at a time, each read from the draft's file as it is sent.
_TRANSFER = TransferConfig(
    multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=2
)
_MISSING = ("404", "NoSuchKey", "NotFound")


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, drafts: Path) -> None:
        self._client = client
        self._bucket = bucket
        self._drafts = drafts
        self._drafts.mkdir(parents=True, exist_ok=True)
        self._publishing: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    async def connect(cls, settings: AssetsSettings, drafts: Path) -> "S3BlobStore":
        """A store on the configured bucket, which must exist and be reachable."""
        bucket = settings.s3_bucket
        if not bucket:
            raise ValueError("MP_ASSETS_S3_BUCKET is required when MP_ASSETS_BLOB_STORE is s3")
        client = await asyncio.to_thread(_client, settings)
        try:
            await asyncio.to_thread(client.head_bucket, Bucket=bucket)
        except (BotoCoreError, ClientError) as error:
            raise SetupError(f"the S3 bucket {bucket!r} cannot be used: {error}") from error
        return cls(client, bucket, drafts)

    def stage(self, chunks: AsyncIterator[bytes]) -> AbstractAsyncContextManager[Draft]:
        return staged(self._drafts, chunks)

    async def publish(self, draft: Draft) -> None:
        # Identical bytes uploaded at once in this process wait for the first upload and then
        # find the object: one PUT instead of several of the same bytes.
        lock = self._publishing.setdefault(draft.key, asyncio.Lock())
        async with lock:
            if await self.exists(draft.key):  # identical bytes are stored once
                return
            await asyncio.to_thread(
                self._client.upload_file,
                str(draft.path),
                self._bucket,
                draft.key,
                Config=_TRANSFER,
            )

    async def exists(self, key: str) -> bool:
        try:
            await asyncio.to_thread(
                self._client.head_object, Bucket=self._bucket, Key=ensure_key(key)
            )
        except ClientError as error:
            if _is_missing(error):
                return False
            raise
        return True

    async def open_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        try:
            response = await asyncio.to_thread(
                self._client.get_object,
                Bucket=self._bucket,
                Key=ensure_key(key),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        except ClientError as error:
            if _is_missing(error):
                raise BlobMissing(key) from None
            raise
        body = response["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_SIZE):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(
            self._client.delete_object, Bucket=self._bucket, Key=ensure_key(key)
        )


def _client(settings: AssetsSettings) -> Any:
    secret = settings.s3_secret_access_key
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(retries={"mode": "standard"}),
    )


def _is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in _MISSING
