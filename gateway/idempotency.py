"""Idempotency-Key on creates: the header goes to the service, which claims it where it records
what it creates (magicpixels.core.idempotency); a replay comes back flagged in the call's
trailing metadata and leaves as `Idempotent-Replayed: true`."""

from typing import Any

from fastapi import Request


def key_of(request: Request) -> str:
    """The request's Idempotency-Key; empty without one."""
    return request.headers.get("idempotency-key", "")


async def replay_headers(call: Any) -> dict[str, str]:
    """The headers that say whether the finished `call` replayed an earlier create."""
    trailers = await call.trailing_metadata()
    if trailers is not None and trailers.get("idempotent-replayed") == "true":
        return {"Idempotent-Replayed": "true"}
    return {}
