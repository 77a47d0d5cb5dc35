"""The auth tables and the queries on them."""

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from magicpixels.core import idempotency
from magicpixels.core.db import row_fields
from magicpixels.core.errors import AlreadyExists, NotFound
from magicpixels.core.idempotency import WINDOW, Claim
from magicpixels.core.timestamps import utcnow
from magicpixels.services.auth.domain import Account, ApiKey, Mode, SealedToken

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("plan", String(40), nullable=False),
    Column("webhook_secret", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("previous_webhook_secret", String(100)),
    Column("previous_webhook_secret_expires_at", DateTime(timezone=True)),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("mode", String(4), nullable=False),
    Column("scopes", Text, nullable=False),  # comma separated
    Column("secret_hash", String(64), nullable=False),
    Column("pepper_version", Integer, nullable=False),
    Column("prefix", String(40), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Index("ix_api_keys_account_id_id", "account_id", "id"),
)

# The Idempotency-Keys of the last 24 hours' creates, each with the key it made and its token.
idempotency_keys = Table(
    "api_key_idempotency_keys",
    metadata,
    Column("scope", String(300), primary_key=True),  # domain.signup_scope, account_scope
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),  # sha256, hex
    Column("api_key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("sealed_token", LargeBinary, nullable=False),
    Column("pepper_version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_api_key_idempotency_keys_created_at", "created_at"),
)


@dataclass(frozen=True)
class KeyClaim:
    """A create's claim of its Idempotency-Key: where, the request, and the token it made."""

    scope: str
    claim: Claim
    token: SealedToken


@dataclass(frozen=True)
class Claimed:
    """What an earlier request with the same Idempotency-Key made."""

    request_hash: str
    key: ApiKey
    token: SealedToken


async def create_account(
    engine: AsyncEngine, account: Account, first_key: ApiKey, claim: KeyClaim | None = None
) -> Claimed | None:
    """Stores the account with its first key and the claim of its Idempotency-Key, all or
    none; an email is taken only once. What the key made instead, when it was claimed."""
    try:
        async with engine.begin() as connection:
            await connection.execute(accounts.insert().values(asdict(account)))
            await _insert_key(connection, first_key)
            if claim is not None:
                await _claim(connection, claim, first_key)
    except IntegrityError as error:
        earlier = None if claim is None else await claimed(engine, claim)
        if earlier is None:
            message = f"an account with the email {account.email} already exists"
            raise AlreadyExists("ACCOUNT_EXISTS", message) from error
        return earlier
    return None


async def get_account(engine: AsyncEngine, account_id: str) -> Account:
    async with engine.connect() as connection:
        return await _get_account(connection, account_id)


async def add_api_key(
    engine: AsyncEngine, key: ApiKey, claim: KeyClaim | None = None
) -> Claimed | None:
    """Stores the key and the claim of its Idempotency-Key, both or neither; what the
    Idempotency-Key made instead, when it was claimed."""
    try:
        async with engine.begin() as connection:
            await _get_account(connection, key.account_id)
            await _insert_key(connection, key)
            if claim is not None:
                await _claim(connection, claim, key)
    except IntegrityError:
        earlier = None if claim is None else await claimed(engine, claim)
        if earlier is None:
            raise
        return earlier
    return None


async def _claim(connection: AsyncConnection, claim: KeyClaim, key: ApiKey) -> None:
    """Claims the Idempotency-Key for `key` (inserted before: the claim refers to it)."""
    made = {
        "api_key_id": key.id,
        "sealed_token": claim.token.data,
        "pepper_version": claim.token.pepper_version,
    }
    await idempotency.record(
        connection,
        idempotency_keys,
        claim.claim,
        key.created_at,
        scope={"scope": claim.scope},
        made=made,
    )


async def claimed(engine: AsyncEngine, claim: KeyClaim) -> Claimed | None:
    query = (
        select(idempotency_keys, api_keys)
        .join(api_keys, api_keys.c.id == idempotency_keys.c.api_key_id)
        .where(
            idempotency_keys.c.scope == claim.scope,
            idempotency_keys.c.key == claim.claim.key,
            # A signup's insert fails on its email before it could replace an expired claim.
            idempotency_keys.c.created_at >= utcnow() - WINDOW,
        )
    )
    async with engine.connect() as connection:
        row = (await connection.execute(query)).first()
    if row is None:
        return None
    found = row._mapping  # both tables have a pepper_version: columns, not names
    token = SealedToken(
        found[idempotency_keys.c.sealed_token], found[idempotency_keys.c.pepper_version]
    )
    key = api_key_of({column.name: found[column] for column in api_keys.c})
    return Claimed(found[idempotency_keys.c.request_hash], key, token)


# Every verification runs it (key_reads.py): built once, as building it (and its cache key) cost
# more CPU than SQLAlchemy's run of its cached SQL.
API_KEY_BY_ID = select(api_keys).where(api_keys.c.id == bindparam("key_id"))


async def find_api_key(engine: AsyncEngine, key_id: str) -> ApiKey | None:
    async with engine.connect() as connection:
        row = (await connection.execute(API_KEY_BY_ID, {"key_id": key_id})).first()
    return None if row is None else api_key_of(row)


async def list_api_keys(
    engine: AsyncEngine, account_id: str, limit: int, before_id: str, mode: Mode | None = None
) -> list[ApiKey]:
    """The account's keys (of `mode` when set), newest first, older than `before_id` if set."""
    query = select(api_keys).where(api_keys.c.account_id == account_id)
    if before_id:
        query = query.where(api_keys.c.id < before_id)
    if mode is not None:
        query = query.where(api_keys.c.mode == mode)
    async with engine.connect() as connection:
        rows = await connection.execute(query.order_by(api_keys.c.id.desc()).limit(limit))
    return [api_key_of(row) for row in rows]


async def revoke_api_key(
    engine: AsyncEngine, account_id: str, key_id: str, now: datetime, mode: Mode | None = None
) -> ApiKey:
    """Marks the key revoked; revoking it again keeps the first revocation time. A key of
    another account, or of another mode than `mode` when set, is not found."""
    owned = (api_keys.c.id == key_id) & (api_keys.c.account_id == account_id)
    if mode is not None:
        owned &= api_keys.c.mode == mode
    async with engine.begin() as connection:
        await connection.execute(
            update(api_keys).where(owned, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        row = (await connection.execute(select(api_keys).where(owned))).first()
    if row is None:
        raise NotFound("API_KEY_NOT_FOUND", f"no API key {key_id}")
    return api_key_of(row)


async def rehash_api_key(engine: AsyncEngine, key: ApiKey, old_version: int) -> None:
    """Stores the key's hash under its new pepper version, unless another replica did first."""
    async with engine.begin() as connection:
        await connection.execute(
            update(api_keys)
            .where(api_keys.c.id == key.id, api_keys.c.pepper_version == old_version)
            .values(secret_hash=key.secret_hash, pepper_version=key.pepper_version)
        )


async def mark_used(engine: AsyncEngine, last_used: Mapping[str, datetime]) -> None:
    """Records when each key was last used, in one statement; a time never moves backwards."""
    statement = (
        update(api_keys)
        .where(
            api_keys.c.id == bindparam("key_id"),
            or_(
                api_keys.c.last_used_at.is_(None),
                api_keys.c.last_used_at < bindparam("used_at"),
            ),
        )
        .values(last_used_at=bindparam("used_at"))
    )
    marks = [{"key_id": key_id, "used_at": at} for key_id, at in last_used.items()]
    async with engine.begin() as connection:
        await connection.execute(statement, marks)


async def rotate_webhook_secret(
    engine: AsyncEngine, account_id: str, new_secret: str, previous_expires_at: datetime
) -> Account:
    """Makes `new_secret` current; the replaced one stays valid until `previous_expires_at`.
    One statement, so concurrent rotations each replace the secret the one before made."""
    async with engine.begin() as connection:
        await connection.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(
                previous_webhook_secret=accounts.c.webhook_secret,
                previous_webhook_secret_expires_at=previous_expires_at,
                webhook_secret=new_secret,
            )
        )
        return await _get_account(connection, account_id)


async def _get_account(connection: AsyncConnection, account_id: str) -> Account:
    query = select(accounts).where(accounts.c.id == account_id)
    row = (await connection.execute(query)).first()
    if row is None:
        raise NotFound("ACCOUNT_NOT_FOUND", f"no account {account_id}")
    return Account(**row_fields(row))


async def _insert_key(connection: AsyncConnection, key: ApiKey) -> None:
    values = {**asdict(key), "scopes": ",".join(key.scopes)}
    await connection.execute(api_keys.insert().values(values))


def api_key_of(row: Row[Any] | Mapping[str, Any]) -> ApiKey:
    """The key a row of `api_keys` holds (a Row, or its columns by name)."""
    fields = row_fields(row)
    return ApiKey(**{**fields, "scopes": tuple(fields["scopes"].split(","))})
