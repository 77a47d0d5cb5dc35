import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.core.db import create_engine
from magicpixels.core.errors import RemoteError, remote_error
from magicpixels.core.service import Mesh
from magicpixels.core.settings import AuthSettings, load_or_create_secret
from magicpixels.core.timestamps import to_timestamp, utcnow
from magicpixels.services.auth import domain, server, store
from magicpixels.services.auth.server import AuthService
from tests.conftest import Database, channel_to, serving

Stub = auth_pb2_grpc.AuthServiceStub


@pytest.fixture
async def auth(database: Database, mesh: Mesh) -> AsyncIterator[Any]:
    async with serving(AuthService(mesh, database.settings(AuthSettings)), mesh) as running:
        channel = channel_to(running, mesh)
        try:
            yield Stub(channel)
        finally:
            await channel.close()


async def refused(call: Awaitable[object]) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return remote_error(caught.value)


async def new_account(auth: Any, email: str = "ada@example.com") -> auth_pb2.CreateAccountResponse:
    return await auth.CreateAccount(auth_pb2.CreateAccountRequest(email=email, name="Ada"))


async def verify(auth: Any, token: str) -> auth_pb2.Principal:
    return await auth.VerifyApiKey(auth_pb2.VerifyApiKeyRequest(token=token))


async def test_create_account_returns_a_live_token_with_every_scope(auth: Any) -> None:
    created = await new_account(auth, "Ada@Example.com")

    assert created.account.id.startswith("acct_")
    assert (created.account.email, created.account.name) == ("ada@example.com", "Ada")
    assert created.account.plan == "free"
    assert created.token.startswith("mp_live_")
    assert created.webhook_secret.startswith("whsec_")
    key = created.api_key
    assert (key.name, key.mode, key.account_id) == (
        "default",
        auth_pb2.KEY_MODE_LIVE,
        created.account.id,
    )
    assert list(key.scopes) == list(domain.SCOPES)
    assert key.prefix == f"mp_live_{key.id[4:18]}..."
    assert created.token.startswith(key.prefix.removesuffix("..."))
    assert not key.HasField("revoke_time")


async def test_the_first_token_verifies_to_its_account(auth: Any) -> None:
    created = await new_account(auth)

    principal = await verify(auth, created.token)

    assert principal.account_id == created.account.id
    assert principal.api_key_id == created.api_key.id
    assert principal.livemode
    assert list(principal.scopes) == list(domain.SCOPES)
    assert not principal.HasField("expire_time")


async def test_get_account(auth: Any) -> None:
    created = await new_account(auth)

    assert (
        await auth.GetAccount(auth_pb2.GetAccountRequest(id=created.account.id)) == created.account
    )
    error = await refused(auth.GetAccount(auth_pb2.GetAccountRequest(id="acct_missing")))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_an_email_has_one_account_whatever_its_case(auth: Any) -> None:
    await new_account(auth, "ada@example.com")

    error = await refused(new_account(auth, "ADA@example.com"))

    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_EXISTS")


async def test_an_invalid_email_is_refused(auth: Any) -> None:
    error = await refused(new_account(auth, "not-an-email"))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PARAMETER_INVALID")
    assert error.metadata == {"param": "email"}


async def test_concurrent_signups_with_one_email_create_exactly_one_account(auth: Any) -> None:
    outcomes = await asyncio.gather(
        *(new_account(auth, "race@example.com") for _ in range(10)), return_exceptions=True
    )

    created = [
        outcome for outcome in outcomes if isinstance(outcome, auth_pb2.CreateAccountResponse)
    ]
    refusals = [remote_error(outcome).reason for outcome in outcomes if outcome not in created]
    assert len(created) == 1
    assert refusals == ["ACCOUNT_EXISTS"] * 9
    assert (await verify(auth, created[0].token)).account_id == created[0].account.id


async def test_a_test_mode_key_verifies_with_livemode_false(auth: Any) -> None:
    account = (await new_account(auth)).account
    made = await auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(
            account_id=account.id, name="ci", mode=auth_pb2.KEY_MODE_TEST, scopes=["jobs:read"]
        )
    )

    principal = await verify(auth, made.token)

    assert made.token.startswith("mp_test_")
    assert made.api_key.mode == auth_pb2.KEY_MODE_TEST
    assert (principal.account_id, principal.livemode) == (account.id, False)
    assert list(principal.scopes) == ["jobs:read"]


async def test_create_api_key_refuses_an_unknown_scope_and_an_unknown_account(auth: Any) -> None:
    account = (await new_account(auth)).account

    unknown_scope = await refused(
        auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(account_id=account.id, scopes=["root"]))
    )
    unknown_account = await refused(
        auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(account_id="acct_x"))
    )

    assert (unknown_scope.reason, unknown_scope.metadata) == (
        "PARAMETER_INVALID",
        {"param": "scopes"},
    )
    assert unknown_account.reason == "ACCOUNT_NOT_FOUND"


async def test_an_expiring_key_verifies_until_it_expires(
    auth: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = (await new_account(auth)).account
    expires = utcnow() + timedelta(hours=1)
    made = await auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(account_id=account.id, expire_time=to_timestamp(expires))
    )

    principal = await verify(auth, made.token)
    monkeypatch.setattr(server, "utcnow", lambda: expires)
    error = await refused(verify(auth, made.token))

    assert principal.expire_time == to_timestamp(expires)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_EXPIRED")


async def test_a_revoked_key_no_longer_verifies(auth: Any) -> None:
    created = await new_account(auth)
    request = auth_pb2.RevokeApiKeyRequest(account_id=created.account.id, id=created.api_key.id)

    revoked = await auth.RevokeApiKey(request)
    again = await auth.RevokeApiKey(request)
    error = await refused(verify(auth, created.token))

    assert revoked.HasField("revoke_time")
    assert again.revoke_time == revoked.revoke_time
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_another_accounts_key_cannot_be_revoked(auth: Any) -> None:
    ada = await new_account(auth, "ada@example.com")
    bob = await new_account(auth, "bob@example.com")

    error = await refused(
        auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(account_id=bob.account.id, id=ada.api_key.id)
        )
    )

    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")
    assert (await verify(auth, ada.token)).account_id == ada.account.id


async def test_an_unknown_key_and_a_wrong_secret_are_refused_alike(auth: Any) -> None:
    created = await new_account(auth)
    secret = created.token.partition(".")[2]
    wrong_secret = created.token.replace(secret, secret[::-1])
    unknown_key = domain.format_token("live", "key_" + "Z" * 30, secret)

    errors = [
        await refused(verify(auth, token)) for token in (wrong_secret, unknown_key, "garbage")
    ]

    assert {(error.code, error.reason, error.message) for error in errors} == {
        (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID", "the API key is not valid")
    }


async def test_a_live_token_presented_as_test_mode_is_refused(auth: Any) -> None:
    created = await new_account(auth)

    error = await refused(verify(auth, created.token.replace("mp_live_", "mp_test_")))

    assert error.reason == "API_KEY_INVALID"


async def test_api_keys_are_listed_newest_first_in_pages(auth: Any) -> None:
    created = await new_account(auth)
    account_id = created.account.id
    names = ["one", "two", "three"]
    for name in names:
        await auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(account_id=account_id, name=name))
    await new_account(auth, "other@example.com")

    first = await auth.ListApiKeys(auth_pb2.ListApiKeysRequest(account_id=account_id, page_size=3))
    second = await auth.ListApiKeys(
        auth_pb2.ListApiKeysRequest(
            account_id=account_id, page_size=3, page_token=first.next_page_token
        )
    )

    assert [key.name for key in first.api_keys] == ["three", "two", "one"]
    assert first.next_page_token == first.api_keys[-1].id
    assert [key.id for key in second.api_keys] == [created.api_key.id]
    assert second.next_page_token == ""


async def test_the_webhook_secret_is_the_one_given_at_signup(auth: Any) -> None:
    created = await new_account(auth)

    found = await auth.GetWebhookSecret(
        auth_pb2.GetWebhookSecretRequest(account_id=created.account.id)
    )

    assert (found.account_id, found.secret) == (created.account.id, created.webhook_secret)


async def test_secrets_are_stored_only_as_keyed_hashes(
    auth: Any, database: Database, mesh: Mesh
) -> None:
    created = await new_account(auth)
    secret = created.token.partition(".")[2]
    pepper = load_or_create_secret(mesh.settings.data_dir, "auth_pepper")

    engine = create_engine(database.url, schema=database.schema)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(select(store.api_keys))).all()
    finally:
        await engine.dispose()

    assert len(rows) == 1
    assert not any(secret in str(value) for value in rows[0])
    assert rows[0].secret_hash == domain.hash_secret(pepper, secret)
    assert rows[0].pepper_version == 1
