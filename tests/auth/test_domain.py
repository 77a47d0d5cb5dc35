import base64
import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from magicpixels.core.errors import InvalidArgument, Unauthenticated
from magicpixels.core.ids import new_id
from magicpixels.services.auth import domain
from magicpixels.services.auth.domain import ApiKey, Peppers

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY_ID = "key_01KB3DW2Q5M8ZV7HC6T1XN4R9P0A2B"
SECRET = "a" * 43
S = "a" * 35  # a well-formed secret


def issued(peppers: Peppers, **changes: Any) -> tuple[ApiKey, str]:
    key, token = domain.issue_key("acct_1", "ci", "live", domain.SCOPES, peppers, NOW)
    return replace(key, **changes), token


@pytest.mark.parametrize("mode", ["live", "test"])
def test_a_formatted_token_parses_back_to_its_parts(mode: domain.Mode) -> None:
    token = domain.format_token(mode, KEY_ID, SECRET)

    assert token == f"mp_{mode}_01KB3DW2Q5M8ZV7HC6T1XN4R9P0A2B.{SECRET}"
    assert domain.parse_token(token) == (mode, KEY_ID, SECRET)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "mp_live_",
        "mp_live_ABC",
        "mp_live_ABC.",
        f"mp_live_.{S}",
        f"mp_prod_ABC.{S}",
        f"MP_LIVE_ABC.{S}",
        "mp_live_ABC." + "a" * 31,
        f"mp_live_ABC.{S}-a",
        f"mp_live_ABC.{S}.aaa",
        f"mp_live_A.C.{S}",
        f"Bearer mp_live_ABC.{S}",
        f"mp_live_ABC.{S}\n",
        f"mp_live_ABC.{S}\u0661",  # a non-ASCII digit
        f"mp_live_key_ABC.{S}",
    ],
)
def test_parse_token_rejects_anything_but_the_token_format(token: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        domain.parse_token(token)

    assert caught.value.reason == "API_KEY_INVALID"


def test_new_secrets_are_43_base62_characters_and_differ() -> None:
    made = {domain.new_secret() for _ in range(100)}

    assert len(made) == 100
    assert all(len(secret) == 43 for secret in made)
    assert set("".join(made)) <= set(string.ascii_letters + string.digits)


def test_hash_secret_is_hex_hmac_sha256_keyed_by_the_pepper() -> None:
    expected = "804e6d854739162fdea0d455b3aafe67f40d2919406186a27be601596ac6d306"

    assert domain.hash_secret("pepper", "secret") == expected


def test_secrets_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []

    def compare_digest(a: str, b: str) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(domain.hmac, "compare_digest", compare_digest)
    peppers = Peppers({1: "pepper"})

    assert peppers.matches("secret", 1, domain.hash_secret("pepper", "secret"))
    assert compared == [(domain.hash_secret("pepper", "secret"),) * 2]


def test_keys_hashed_with_an_older_pepper_still_match_after_a_new_one_is_added() -> None:
    old_hash = Peppers({1: "old"}).hash("secret")
    peppers = Peppers({1: "old", 2: "new"})

    assert peppers.current == 2
    assert peppers.hash("secret") == domain.hash_secret("new", "secret")
    assert peppers.matches("secret", 1, old_hash)
    assert not peppers.matches("secret", 2, old_hash)
    assert not peppers.matches("secret", 3, old_hash)


def test_an_issued_key_stores_only_the_hash_of_its_tokens_secret() -> None:
    peppers = Peppers({1: "pepper"})
    key, token = domain.issue_key("acct_1", "ci", "test", ("jobs:read",), peppers, NOW)
    mode, key_id, secret = domain.parse_token(token)

    assert (mode, key_id) == ("test", key.id)
    assert key.secret_hash == domain.hash_secret("pepper", secret)
    assert secret not in repr(key)
    assert key.pepper_version == 1
    assert key.prefix == f"mp_test_{key.id[4:18]}..."
    assert not key.livemode


def test_display_prefix_shows_the_start_of_the_token() -> None:
    key_id = "key_01M8A7XRW876FD4FEHDSE23DTEHKYC"
    assert domain.display_prefix("live", key_id) == "mp_live_01M8A7XRW876FD..."


def test_keys_made_together_have_different_prefixes() -> None:
    prefixes = {domain.display_prefix("live", new_id("key")) for _ in range(100)}
    assert len(prefixes) == 100


def test_authenticate_answers_the_key_of_a_valid_token() -> None:
    peppers = Peppers({1: "pepper"})
    key, token = issued(peppers)

    assert domain.authenticate(key, domain.parse_token(token), peppers, NOW) == key


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"revoked_at": NOW}, "API_KEY_REVOKED"),
        ({"expires_at": NOW}, "API_KEY_EXPIRED"),
        ({"expires_at": NOW - timedelta(days=1)}, "API_KEY_EXPIRED"),
        ({"secret_hash": domain.hash_secret("pepper", "b" * 43)}, "API_KEY_INVALID"),
        ({"mode": "test"}, "API_KEY_INVALID"),
        ({"pepper_version": 2}, "API_KEY_INVALID"),
    ],
)
def test_authenticate_refuses(changes: dict[str, object], reason: str) -> None:
    peppers = Peppers({1: "pepper"})
    key, token = issued(peppers, **changes)

    with pytest.raises(Unauthenticated) as caught:
        domain.authenticate(key, domain.parse_token(token), peppers, NOW)

    assert caught.value.reason == reason


def test_an_unknown_key_and_a_wrong_secret_fail_with_the_same_message() -> None:
    peppers = Peppers({1: "pepper"})
    key, token = issued(peppers, secret_hash="0" * 64)
    errors = []
    for found in (None, key):
        with pytest.raises(Unauthenticated) as caught:
            domain.authenticate(found, domain.parse_token(token), peppers, NOW)
        errors.append((caught.value.reason, caught.value.message))

    assert errors[0] == errors[1] == ("API_KEY_INVALID", "the API key is not valid")


def test_a_key_that_expires_later_is_accepted() -> None:
    peppers = Peppers({1: "pepper"})
    key, token = issued(peppers, expires_at=NOW + timedelta(seconds=1))

    assert domain.authenticate(key, domain.parse_token(token), peppers, NOW) == key


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  a.b+c@mail.example.org ", "a.b+c@mail.example.org"),
    ],
)
def test_emails_are_stored_lowercase(given: str, stored: str) -> None:
    assert domain.normalize_email(given) == stored


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ada",
        "@example.com",
        "ada@",
        "ada@example",
        "ada@@example.com",
        "a@b@example.com",
        "ada@example.",
        "ada@.com",
        "a da@example.com",
        "a" * 245 + "@example.com",
    ],
)
def test_invalid_emails_are_refused(email: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.normalize_email(email)

    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "email")


def test_names_longer_than_200_characters_are_refused() -> None:
    assert domain.checked_name(" " + "n" * 200) == "n" * 200
    with pytest.raises(InvalidArgument) as caught:
        domain.checked_name("n" * 201)

    assert caught.value.param == "name"


def test_no_requested_scope_means_every_scope() -> None:
    assert domain.checked_scopes([]) == domain.SCOPES
    assert domain.SCOPES == (
        "jobs:read",
        "jobs:write",
        "assets:read",
        "assets:write",
        "account:read",
        "keys:write",
    )


def test_requested_scopes_are_deduplicated_in_canonical_order() -> None:
    requested = ["keys:write", "jobs:read", "keys:write"]

    assert domain.checked_scopes(requested) == ("jobs:read", "keys:write")


def test_an_unknown_scope_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.checked_scopes(["jobs:read", "jobs:delete"])

    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "scopes")
    assert "jobs:delete" in caught.value.message


def test_an_expiry_in_the_past_is_refused() -> None:
    assert domain.checked_expiry(None, NOW) is None
    with pytest.raises(InvalidArgument) as caught:
        domain.checked_expiry(NOW, NOW)

    assert caught.value.param == "expires_at"


def test_a_new_account_is_on_the_free_plan_with_a_webhook_secret() -> None:
    account = domain.new_account("Ada@Example.com", " Ada ", NOW)

    assert account.id.startswith("acct_")
    assert (account.email, account.name, account.plan) == ("ada@example.com", "Ada", "free")
    assert account.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(account.webhook_secret.removeprefix("whsec_"))) == 32
