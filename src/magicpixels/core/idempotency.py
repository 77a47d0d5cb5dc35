"""Idempotency-Key claims, as API.md defines them for every create.

A service claims the key in the transaction that records what the request creates, so of two
requests with the same key one creates and the other finds the claim: it is answered with what
the first created (the servicer sets `REPLAYED` as trailing metadata, which the gateway sends
as `Idempotent-Replayed: true`), or refused when its request differs. A claim lasts 24 hours.
"""

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, Table, delete, or_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from magicpixels.core.errors import Aborted, AlreadyExists, InvalidArgument
from magicpixels.core.timestamps import utcnow

WINDOW = timedelta(hours=24)
MAX_KEY_LENGTH = 255
# Trailing metadata of a create answered with what an earlier request with its key created.
REPLAYED = (("idempotent-replayed", "true"),)
# How often a service forgets the claims past the window.
FORGET_EVERY_SECONDS = 600.0

log = structlog.get_logger("magicpixels.idempotency")


@dataclass(frozen=True)
class Claim:
    """An Idempotency-Key and the hash of the request that came with it."""

    key: str
    request_hash: str


def claim(key: str, request: Message | bytes) -> Claim | None:
    """The claim a request (its fields that say what to create, or their bytes) makes on
    `key`; None without a key."""
    if not key:
        return None
    check_key(key)
    data = request if isinstance(request, bytes) else request.SerializeToString(deterministic=True)
    return Claim(key, hashlib.sha256(data).hexdigest())


def check_key(key: str) -> None:
    """Refuses a key longer than API.md allows, before anything is read or made."""
    if len(key) > MAX_KEY_LENGTH:
        message = f"idempotency_key must be at most {MAX_KEY_LENGTH} characters"
        raise InvalidArgument("PARAMETER_INVALID", message, param="idempotency_key")


def check_same_request(claim: Claim, stored_hash: str) -> None:
    """Refuses to replay what the key created for a different request."""
    if stored_hash != claim.request_hash:
        message = "this Idempotency-Key was used with a different request"
        raise AlreadyExists("IDEMPOTENCY_KEY_REUSED", message)


def key_in_use() -> Aborted:
    message = "a request with this Idempotency-Key is still in progress; retry later"
    return Aborted("IDEMPOTENCY_KEY_IN_USE", message)


async def record(
    connection: AsyncConnection,
    claims: Table,
    claim: Claim,
    now: datetime,
    *,
    scope: Mapping[str, Any],
    made: Mapping[str, Any],
    stale: ColumnElement[bool] | None = None,
) -> None:
    """Records the claim in a service's table of them (primary key: the `scope` columns and
    `key`), for what the request `made` (the columns naming it), in the caller's transaction.

    A claim of the key older than the window (or `stale` for a reason of the service's) is
    replaced; a live one is kept, and the insert fails on the primary key: on PostgreSQL a
    concurrent one waits for the transaction that inserts it, then fails.
    """
    same_key = [claims.c[name] == value for name, value in scope.items()]
    old = claims.c.created_at < now - WINDOW
    replaced = old if stale is None else or_(old, stale)
    await connection.execute(delete(claims).where(*same_key, claims.c.key == claim.key, replaced))
    await connection.execute(
        claims.insert().values(
            **scope, key=claim.key, request_hash=claim.request_hash, created_at=now, **made
        )
    )


async def forget(engine: AsyncEngine, claims: Table, created_before: datetime) -> None:
    """Deletes the claims made before `created_before` from a service's table of them (with
    `created_at`): their keys are free again, and what a claim kept with it is gone."""
    async with engine.begin() as connection:
        await connection.execute(delete(claims).where(claims.c.created_at < created_before))


async def keep_forgetting(engine: AsyncEngine, claims: Table) -> None:
    """Forgets the claims past the window every FORGET_EVERY_SECONDS, until cancelled."""
    while True:
        try:
            await forget(engine, claims, utcnow() - WINDOW)
        except Exception:  # a database away (a raw OSError on PostgreSQL): the next pass tries
            log.warning("idempotency_keys_not_forgotten", exc_info=True)
        await asyncio.sleep(FORGET_EVERY_SECONDS)
