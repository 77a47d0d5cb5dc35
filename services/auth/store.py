"""The auth tables and the queries on them."""

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from magicpixels.core.db import row_fields
from magicpixels.core.errors import AlreadyExists, NotFound
from magicpixels.services.auth.domain import Account, ApiKey

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


async def create_account(engine: AsyncEngine, account: Account, first_key: ApiKey) -> None:
    """Stores the account with its first key, both or neither; an email is taken only once."""
    try:
        async with engine.begin() as connection:
            await connection.execute(accounts.insert().values(asdict(account)))
            await _insert_key(connection, first_key)
    except IntegrityError as error:
        message = f"an account with the email {account.email} already exists"
        raise AlreadyExists("ACCOUNT_EXISTS", message) from error


async def get_account(engine: AsyncEngine, account_id: str) -> Account:
    async with engine.connect() as connection:
        return await _get_account(connection, account_id)


async def add_api_key(engine: AsyncEngine, key: ApiKey) -> None:
    async with engine.begin() as connection:
        await _get_account(connection, key.account_id)
        await _insert_key(connection, key)


async def find_api_key(engine: AsyncEngine, key_id: str) -> ApiKey | None:
    async with engine.connect() as connection:
        row = (await connection.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
    return None if row is None else _api_key(row)


async def list_api_keys(
    engine: AsyncEngine, account_id: str, limit: int, before_id: str
) -> list[ApiKey]:
    """The account's keys, newest first, older than `before_id` when it is set."""
    query = select(api_keys).where(api_keys.c.account_id == account_id)
    if before_id:
        query = query.where(api_keys.c.id < before_id)
    async with engine.connect() as connection:
        rows = await connection.execute(query.order_by(api_keys.c.id.desc()).limit(limit))
    return [_api_key(row) for row in rows]


async def revoke_api_key(
    engine: AsyncEngine, account_id: str, key_id: str, now: datetime
) -> ApiKey:
    """Marks the key revoked; revoking it again keeps the first revocation time."""
    owned = (api_keys.c.id == key_id) & (api_keys.c.account_id == account_id)
    async with engine.begin() as connection:
        await connection.execute(
            update(api_keys).where(owned, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        row = (await connection.execute(select(api_keys).where(owned))).first()
    if row is None:
        raise NotFound("API_KEY_NOT_FOUND", f"no API key {key_id}")
    return _api_key(row)


async def _get_account(connection: AsyncConnection, account_id: str) -> Account:
    query = select(accounts).where(accounts.c.id == account_id)
    row = (await connection.execute(query)).first()
    if row is None:
        raise NotFound("ACCOUNT_NOT_FOUND", f"no account {account_id}")
    return Account(**row_fields(row))


async def _insert_key(connection: AsyncConnection, key: ApiKey) -> None:
    values = {**asdict(key), "scopes": ",".join(key.scopes)}
    await connection.execute(api_keys.insert().values(values))


def _api_key(row: Row[Any]) -> ApiKey:
    return ApiKey(**{**row_fields(row), "scopes": tuple(row.scopes.split(","))})
