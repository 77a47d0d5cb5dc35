"""Protobuf messages as the API's JSON objects (API.md).

A job's is `magicpixels.services.jobs.public`, which its webhooks carry too.
"""

from typing import Any

from magicpixels.assets.v1 import assets_pb2
from magicpixels.auth.v1 import auth_pb2
from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.timestamps import rfc3339_field as timestamp


def account(
    found: auth_pb2.Account, balance: billing_pb2.Balance, plan: str | None = None
) -> dict[str, Any]:
    """`plan`: the active subscription's, when there is one; else the account's own (free)."""
    return {
        "object": "account",
        "id": found.id,
        "email": found.email,
        "name": found.name or None,
        "plan": plan or found.plan,
        "credits": {"available": balance.available, "reserved": balance.reserved},
        "created_at": timestamp(found, "create_time"),
    }


def api_key(key: auth_pb2.ApiKey, token: str | None = None) -> dict[str, Any]:
    rendered = {
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "mode": "test" if key.mode == auth_pb2.KEY_MODE_TEST else "live",
        "scopes": list(key.scopes),
        "prefix": key.prefix,
        "created_at": timestamp(key, "create_time"),
        "expires_at": timestamp(key, "expire_time"),
        "last_used_at": timestamp(key, "last_use_time"),
        "revoked_at": timestamp(key, "revoke_time"),
    }
    if token is not None:
        rendered["token"] = token
    return rendered


ASSET_KINDS = {
    assets_pb2.ASSET_KIND_IMAGE: "image",
    assets_pb2.ASSET_KIND_AUDIO: "audio",
    assets_pb2.ASSET_KIND_VIDEO: "video",
}
ASSET_ORIGINS = {
    assets_pb2.ASSET_ORIGIN_UPLOAD: "upload",
    assets_pb2.ASSET_ORIGIN_GENERATED: "generated",
}


def asset(found: assets_pb2.Asset) -> dict[str, Any]:
    """An asset; its size, length and job only where they apply."""
    measures = ("width", "height", "duration_seconds")
    return {
        "object": "asset",
        "id": found.id,
        "kind": ASSET_KINDS[found.kind],
        "content_type": found.content_type,
        "size_bytes": found.size_bytes,
        "sha256": found.sha256,
        **{name: getattr(found, name) for name in measures if found.HasField(name)},
        "origin": ASSET_ORIGINS[found.origin],
        **({"job_id": found.job_id} if found.job_id else {}),
        "livemode": found.livemode,
        "created_at": timestamp(found, "create_time"),
    }
