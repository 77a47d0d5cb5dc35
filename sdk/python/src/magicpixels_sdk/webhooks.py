"""Verifying the webhooks the API sends, as Standard Webhooks signs them: `webhook-signature`
holds `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the account's `whsec_` secret
(several, space-separated, while a rotated secret is still valid)."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from magicpixels_sdk.errors import WebhookVerificationError

# How far a webhook's timestamp may stray from now: older ones may be replays.
DEFAULT_TOLERANCE_SECONDS = 300


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The event (`{"type", "timestamp", "data"}`) of a genuine, recent webhook; anything
    else raises WebhookVerificationError. Pass the body exactly as received."""
    body = payload.encode() if isinstance(payload, str) else payload
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, -timestamp or -signature header")
    _check_timestamp(timestamp, tolerance, time.time() if now is None else now)
    expected = sign(secret, message_id, int(timestamp), body)
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return json.loads(body)
    raise WebhookVerificationError("no signature matches the secret")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of `id.timestamp.body` under the key in a `whsec_` secret."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError as error:
        raise WebhookVerificationError("the secret is not a whsec_ secret") from error
    signed = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _check_timestamp(timestamp: str, tolerance: int, now: float) -> None:
    if not timestamp.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not a Unix time")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
