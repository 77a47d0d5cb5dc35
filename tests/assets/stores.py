"""The blob stores the tests run on: a local folder, and a bucket of moto's S3 server, reached
over real HTTP on a free port of this machine.

A test module or conftest registers the fixtures it needs from here:
`s3_endpoint = pytest.fixture(scope="session", name="s3_endpoint")(serve_s3)` and
`blob_store = pytest.fixture(name="blob_store")(choose_blob_store)`.
"""

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

# Runs a test that takes `blob_store` on the local store and on an S3 bucket.
on_every_store = pytest.mark.parametrize("blob_store", ["local", "s3"], indirect=True)
_CREDENTIALS = {"s3_access_key_id": "test-key", "s3_secret_access_key": "test-secret"}


def serve_s3() -> Iterator[str]:
    """moto's standalone S3 server (a session fixture); yields its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class StoreUnderTest:
    """Where a test's blobs live, and what it can see of them from outside the service."""

    kind: str
    folder: Path
    endpoint: str
    bucket: str

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """AssetsSettings fields that put the service's blobs here."""
        fields: dict[str, Any] = {"blob_store": self.kind, "blob_dir": self.folder}
        if self.kind == "s3":
            fields |= {"s3_bucket": self.bucket, "s3_endpoint_url": self.endpoint}
            fields |= {"s3_region": "us-east-1", **_CREDENTIALS}
        return fields | overrides

    def blobs(self) -> list[str]:
        """The keys of the published blobs."""
        if self.kind == "s3":
            listed = self._client().list_objects_v2(Bucket=self.bucket)
            return sorted(item["Key"] for item in listed.get("Contents", []))
        return sorted(path.name for path in self._files() if path.parent.name != "tmp")

    def leftovers(self) -> list[str]:
        """Everything stored or staged: objects, blob files and drafts alike."""
        objects = self.blobs() if self.kind == "s3" else []
        return sorted([*objects, *(str(path) for path in self._files())])

    def drafts(self) -> list[Path]:
        return [path for path in self._files() if path.parent.name == "tmp"]

    def _files(self) -> list[Path]:
        return [path for path in self.folder.rglob("*") if path.is_file()]

    def _client(self) -> Any:
        return s3_client(self.endpoint)


@cache
def s3_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=_CREDENTIALS["s3_access_key_id"],
        aws_secret_access_key=_CREDENTIALS["s3_secret_access_key"],
    )


def store_under_test(kind: str, folder: Path, endpoint: str) -> StoreUnderTest:
    """A fresh store of the kind: an empty folder, and for S3 a new bucket of its own."""
    bucket = f"blobs-{secrets.token_hex(6)}"
    if kind == "s3":
        s3_client(endpoint).create_bucket(Bucket=bucket)
    return StoreUnderTest(kind, folder, endpoint, bucket)


def choose_blob_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> StoreUnderTest:
    """The local store, or the one a test names with `on_every_store` (a fixture)."""
    kind = getattr(request, "param", "local")
    endpoint = request.getfixturevalue("s3_endpoint") if kind == "s3" else ""
    return store_under_test(kind, tmp_path_factory.mktemp("blobs"), endpoint)
