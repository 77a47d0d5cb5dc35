import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import select

from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.core import idempotency
from magicpixels.core.db import create_engine
from magicpixels.core.errors import RemoteError, remote_error
from magicpixels.core.service import Mesh
from magicpixels.core.settings import AuthSettings, load_or_create_secret
from magicpixels.core.timestamps import from_timestamp, to_timestamp, utcnow
from magicpixels.services.auth import domain, server, store
from magicpixels.services.auth.server import AuthService
from tests.conftest import Database, channel_to, serving
from tests.support import eventually

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
    secret = domain.parse_token(created.token).secret
    wrong_secret = domain.format_token("live", created.api_key.id, secret[::-1])
    unknown_key = domain.format_token("live", "key_" + "Z" * 30, secret)

    errors = [
        await refused(verify(auth, token)) for token in (wrong_secret, unknown_key, "garbage")
    ]

    assert {(error.code, error.reason, error.message) for error in errors} == {
        (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID", "the API key is not valid")
    }


async def test_a_live_token_presented_as_test_mode_is_refused(auth: Any) -> None:
    created = await new_account(auth)

    parsed = domain.parse_token(created.token)
    as_test = domain.format_token("test", parsed.key_id, parsed.secret)

    error = await refused(verify(auth, as_test))

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
    secret = domain.parse_token(created.token).secret
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


async def stored_key(database: Database, key_id: str) -> Any:
    engine = create_engine(database.url, schema=database.schema)
    try:
        async with engine.connect() as connection:
            query = select(store.api_keys).where(store.api_keys.c.id == key_id)
            return (await connection.execute(query)).one()
    finally:
        await engine.dispose()


@asynccontextmanager
async def auth_with(database: Database, mesh: Mesh, **settings: Any) -> AsyncIterator[Any]:
    service = AuthService(mesh, database.settings(AuthSettings, **settings))
    async with serving(service, mesh) as running:
        channel = channel_to(running, mesh)
        try:
            yield Stub(channel)
        finally:
            await channel.close()


async def test_a_new_pepper_hashes_new_keys_and_old_keys_still_verify(
    database: Database, mesh: Mesh
) -> None:
    async with auth_with(database, mesh, pepper="first") as first:
        old = await new_account(first)
    rotated = {"pepper": "first", "peppers": {2: "second"}}

    async with auth_with(database, mesh, **rotated) as auth:
        made = await auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(account_id=old.account.id))
        stored_before = await stored_key(database, old.api_key.id)
        assert (await verify(auth, old.token)).api_key_id == old.api_key.id
        assert (await verify(auth, made.token)).api_key_id == made.api_key.id

    new_row = await stored_key(database, made.api_key.id)
    upgraded = await stored_key(database, old.api_key.id)
    new_secret = domain.parse_token(made.token).secret
    old_secret = domain.parse_token(old.token).secret
    assert stored_before.pepper_version == 1
    assert (new_row.pepper_version, new_row.secret_hash) == (
        2,
        domain.hash_secret("second", new_secret),
    )
    assert (upgraded.pepper_version, upgraded.secret_hash) == (
        2,
        domain.hash_secret("second", old_secret),
    )


async def test_a_new_pepper_can_be_known_before_it_becomes_current(
    database: Database, mesh: Mesh
) -> None:
    staged = {"pepper": "first", "peppers": {2: "second"}, "pepper_version": 1}
    async with auth_with(database, mesh, **staged) as auth:
        created = await new_account(auth)
        await verify(auth, created.token)

    assert (await stored_key(database, created.api_key.id)).pepper_version == 1


async def test_a_pepper_version_that_is_not_configured_stops_the_start(
    database: Database, mesh: Mesh
) -> None:
    service = AuthService(mesh, database.settings(AuthSettings, pepper_version=2))

    with pytest.raises(ValueError, match="pepper version 2 is not configured"):
        await service.start()


async def test_a_revocation_is_announced_on_the_bus(auth: Any, mesh: Mesh) -> None:
    created = await new_account(auth)
    request = auth_pb2.RevokeApiKeyRequest(account_id=created.account.id, id=created.api_key.id)

    async with mesh.bus.subscribe(domain.REVOKED_KEYS_CHANNEL) as announced:
        await auth.RevokeApiKey(request)
        async with asyncio.timeout(10):
            message = await anext(announced)

    assert message == created.api_key.id.encode()


async def test_keys_are_listed_and_revoked_within_one_mode(auth: Any) -> None:
    created = await new_account(auth)
    account_id = created.account.id
    test_key = await auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(account_id=account_id, mode=auth_pb2.KEY_MODE_TEST)
    )

    modes = (auth_pb2.KEY_MODE_TEST, auth_pb2.KEY_MODE_LIVE, auth_pb2.KEY_MODE_UNSPECIFIED)
    requests = [auth_pb2.ListApiKeysRequest(account_id=account_id, mode=mode) for mode in modes]
    listed = {
        request.mode: [key.id for key in (await auth.ListApiKeys(request)).api_keys]
        for request in requests
    }
    live_from_test = await refused(
        auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(
                account_id=account_id, id=created.api_key.id, mode=auth_pb2.KEY_MODE_TEST
            )
        )
    )

    assert listed == {
        auth_pb2.KEY_MODE_TEST: [test_key.api_key.id],
        auth_pb2.KEY_MODE_LIVE: [created.api_key.id],
        auth_pb2.KEY_MODE_UNSPECIFIED: [test_key.api_key.id, created.api_key.id],
    }
    assert (live_from_test.code, live_from_test.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "API_KEY_NOT_FOUND",
    )
    assert (await verify(auth, created.token)).api_key_id == created.api_key.id


async def create_key(auth: Any, account_id: str, issuer: str, **fields: Any) -> Any:
    return await auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(account_id=account_id, issuer_api_key_id=issuer, **fields)
    )


async def test_a_key_issued_by_a_key_holds_at_most_its_scopes(auth: Any) -> None:
    created = await new_account(auth)
    account_id = created.account.id
    narrow = await create_key(auth, account_id, created.api_key.id, scopes=["keys:write"])

    inherited = await create_key(auth, account_id, narrow.api_key.id)
    wider = await refused(create_key(auth, account_id, narrow.api_key.id, scopes=["jobs:write"]))

    assert list(inherited.api_key.scopes) == ["keys:write"]
    assert (wider.code, wider.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


async def test_a_test_mode_issuer_cannot_make_a_live_key(auth: Any) -> None:
    created = await new_account(auth)
    account_id = created.account.id
    test_key = await create_key(auth, account_id, "", mode=auth_pb2.KEY_MODE_TEST)

    error = await refused(create_key(auth, account_id, test_key.api_key.id))
    made = await create_key(auth, account_id, test_key.api_key.id, mode=auth_pb2.KEY_MODE_TEST)

    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "TEST_KEY_NOT_ALLOWED")
    assert made.token.startswith("mp_test_")


async def test_an_issuer_must_be_a_usable_key_of_the_account(auth: Any) -> None:
    ada = await new_account(auth, "ada@example.com")
    bob = await new_account(auth, "bob@example.com")
    await auth.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(account_id=bob.account.id, id=bob.api_key.id)
    )

    foreign = await refused(create_key(auth, ada.account.id, bob.api_key.id))
    revoked = await refused(create_key(auth, bob.account.id, bob.api_key.id))

    assert (foreign.code, foreign.reason) == (grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")
    assert (revoked.code, revoked.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def webhook_secret(auth: Any, account_id: str) -> auth_pb2.WebhookSecret:
    return await auth.GetWebhookSecret(auth_pb2.GetWebhookSecretRequest(account_id=account_id))


async def test_a_rotated_webhook_secret_keeps_the_old_one_valid_for_the_grace_period(
    auth: Any,
) -> None:
    created = await new_account(auth)
    before = utcnow()

    rotated = await auth.RotateWebhookSecret(
        auth_pb2.RotateWebhookSecretRequest(account_id=created.account.id)
    )

    assert rotated.secret.startswith("whsec_")
    assert rotated.secret != created.webhook_secret
    assert rotated.previous_secret == created.webhook_secret
    grace = from_timestamp(rotated.previous_expire_time) - before
    assert timedelta(hours=24) <= grace < timedelta(hours=24, minutes=1)
    assert await webhook_secret(auth, created.account.id) == rotated


async def test_a_rotation_without_grace_drops_the_old_secret_at_once(auth: Any) -> None:
    created = await new_account(auth)
    request = auth_pb2.RotateWebhookSecretRequest(
        account_id=created.account.id, grace_period=Duration(seconds=0)
    )

    rotated = await auth.RotateWebhookSecret(request)
    found = await webhook_secret(auth, created.account.id)

    assert (found.secret, found.previous_secret) == (rotated.secret, "")
    assert not found.HasField("previous_expire_time")


async def test_rotation_refuses_a_grace_period_over_a_week_and_an_unknown_account(
    auth: Any,
) -> None:
    created = await new_account(auth)

    too_long = await refused(
        auth.RotateWebhookSecret(
            auth_pb2.RotateWebhookSecretRequest(
                account_id=created.account.id, grace_period=Duration(seconds=7 * 86400 + 1)
            )
        )
    )
    unknown = await refused(
        auth.RotateWebhookSecret(auth_pb2.RotateWebhookSecretRequest(account_id="acct_x"))
    )

    assert (too_long.reason, too_long.metadata) == (
        "PARAMETER_INVALID",
        {"param": "grace_period_seconds"},
    )
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    assert (await webhook_secret(auth, created.account.id)).secret == created.webhook_secret


async def test_concurrent_rotations_each_replace_a_different_secret(auth: Any) -> None:
    created = await new_account(auth)
    request = auth_pb2.RotateWebhookSecretRequest(account_id=created.account.id)

    rotations = await asyncio.gather(*(auth.RotateWebhookSecret(request) for _ in range(8)))

    made = {rotation.secret for rotation in rotations}
    replaced = [rotation.previous_secret for rotation in rotations]
    assert len(made) == 8
    assert len(set(replaced)) == 8  # no two rotations read the same secret as current
    assert set(replaced) - made == {created.webhook_secret}


async def test_verified_keys_get_their_last_use_time_written_in_the_background(
    database: Database, mesh: Mesh
) -> None:
    async with auth_with(database, mesh, last_used_flush_seconds=0.05) as auth:
        created = await new_account(auth)
        before = utcnow()
        await verify(auth, created.token)

        async def written() -> bool:
            listed = await auth.ListApiKeys(
                auth_pb2.ListApiKeysRequest(account_id=created.account.id)
            )
            return listed.api_keys[0].HasField("last_use_time")

        await eventually(written)
        listed = await auth.ListApiKeys(auth_pb2.ListApiKeysRequest(account_id=created.account.id))

    assert from_timestamp(listed.api_keys[0].last_use_time) >= before.replace(microsecond=0)


# Idempotency-Key on signups and key creates: a repeat answers what the first made, token
# included; the token is kept sealed, and only for the key's 24 hours.


async def signup(auth: Any, key: str, email: str = "ada@example.com", name: str = "Ada") -> Any:
    """The answer and whether it was a replay."""
    request = auth_pb2.CreateAccountRequest(email=email, name=name, idempotency_key=key)
    return await answered(auth.CreateAccount(request))


async def answered(call: Any) -> tuple[Any, bool]:
    """The call's answer and whether its trailing metadata says it was a replay."""
    answer = await call
    return answer, (await call.trailing_metadata()).get("idempotent-replayed") == "true"


async def rows_of(database: Database, table: Any) -> list[Any]:
    engine = create_engine(database.url, schema=database.schema)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(select(table))).all())
    finally:
        await engine.dispose()


async def test_a_signup_repeated_with_its_idempotency_key_answers_the_same_account_and_token(
    auth: Any, database: Database
) -> None:
    first, first_replayed = await signup(auth, "signup-1")
    again, again_replayed = await signup(auth, "signup-1")

    assert (first_replayed, again_replayed) == (False, True)
    assert again == first
    assert (await verify(auth, again.token)).api_key_id == first.api_key.id
    assert len(await rows_of(database, store.accounts)) == 1


async def test_a_signup_key_sent_with_another_name_is_refused_and_makes_nothing(
    auth: Any, database: Database
) -> None:
    await signup(auth, "signup-1")

    error = await refused(signup(auth, "signup-1", name="Ada L."))
    other_email, replayed = await signup(auth, "signup-1", email="bob@example.com")

    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    # The key's scope is the email: another address is another signup.
    assert (other_email.account.email, replayed) == ("bob@example.com", False)
    assert len(await rows_of(database, store.accounts)) == 2


async def test_concurrent_signups_with_one_idempotency_key_all_get_the_one_account(
    auth: Any, database: Database
) -> None:
    answers = await asyncio.gather(*(signup(auth, "signup-race") for _ in range(10)))

    assert len({answer.token for answer, _ in answers}) == 1
    assert sorted(replayed for _, replayed in answers) == [False] + [True] * 9
    assert len(await rows_of(database, store.accounts)) == 1


async def test_a_key_create_repeated_with_its_idempotency_key_answers_the_same_key(
    auth: Any, database: Database
) -> None:
    ada = await new_account(auth)
    request = auth_pb2.CreateApiKeyRequest(
        account_id=ada.account.id,
        issuer_api_key_id=ada.api_key.id,
        name="ci",
        mode=auth_pb2.KEY_MODE_TEST,
        idempotency_key="key-1",
    )
    first, first_replayed = await answered(auth.CreateApiKey(request))
    again, again_replayed = await answered(auth.CreateApiKey(request))
    renamed = auth_pb2.CreateApiKeyRequest()
    renamed.CopyFrom(request)
    renamed.name = "deploy"
    other_body = await refused(auth.CreateApiKey(renamed))
    child = await create_key(auth, ada.account.id, ada.api_key.id, name="child")
    other_issuer = auth_pb2.CreateApiKeyRequest()
    other_issuer.CopyFrom(request)
    other_issuer.issuer_api_key_id = child.api_key.id
    by_another_key = await refused(auth.CreateApiKey(other_issuer))

    assert (first_replayed, again_replayed) == (False, True)
    assert again == first
    assert (await verify(auth, again.token)).api_key_id == first.api_key.id
    # The hash covers the issuer: another key of the account may not fetch this one's token.
    for error in (other_body, by_another_key):
        assert (error.code, error.reason) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
        )
    assert len(await rows_of(database, store.api_keys)) == 3


async def test_replayable_tokens_are_stored_sealed_and_forgotten_after_the_window(
    auth: Any, database: Database
) -> None:
    first, _ = await signup(auth, "signup-1")
    secret = domain.parse_token(first.token).secret
    (claim,) = await rows_of(database, store.idempotency_keys)
    assert not any(secret in str(value) for value in claim)
    assert secret.encode() not in claim.sealed_token

    engine = create_engine(database.url, schema=database.schema)
    try:
        await idempotency.forget(engine, store.idempotency_keys, utcnow() + timedelta(seconds=1))
    finally:
        await engine.dispose()
    forgotten = await refused(signup(auth, "signup-1"))

    assert await rows_of(database, store.idempotency_keys) == []
    # Past the window the key is free: a new signup, refused only for its email.
    assert (forgotten.code, forgotten.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_EXISTS")


async def test_an_idempotency_key_over_255_characters_is_refused(auth: Any) -> None:
    error = await refused(signup(auth, "k" * 256))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PARAMETER_INVALID")
    assert error.metadata == {"param": "idempotency_key"}


async def test_a_claim_past_the_window_is_not_replayed_before_it_is_forgotten(
    auth: Any, database: Database
) -> None:
    await signup(auth, "signup-1")
    engine = create_engine(database.url, schema=database.schema)
    try:
        async with engine.begin() as connection:
            aged = utcnow() - idempotency.WINDOW - timedelta(seconds=1)
            await connection.execute(store.idempotency_keys.update().values(created_at=aged))
    finally:
        await engine.dispose()

    error = await refused(signup(auth, "signup-1"))

    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_EXISTS")
