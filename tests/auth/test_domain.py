import base64
import string
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from magicpixels.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from magicpixels.core.ids import new_id
from magicpixels.services.auth import domain
from magicpixels.services.auth.domain import ApiKey, Peppers

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY_ID = "key_01KB3DW2Q5M8ZV7HC6T1XN4R9P0A2B"
SECRET = "a" * 43
TOKEN = domain.format_token("live", KEY_ID, SECRET)
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def issued(peppers: Peppers, **changes: Any) -> tuple[ApiKey, str]:
    key, token = domain.issue_key("acct_1", "ci", "live", domain.SCOPES, peppers, NOW)
    return replace(key, **changes), token


def from_base62(text: str) -> int:
    value = 0
    for char in text:
        value = value * 62 + BASE62.index(char)
    return value


@pytest.mark.parametrize("mode", ["live", "test"])
def test_a_formatted_token_parses_back_to_its_parts(mode: domain.Mode) -> None:
    token = domain.format_token(mode, KEY_ID, SECRET)

    body = f"mp_{mode}_01KB3DW2Q5M8ZV7HC6T1XN4R9P0A2B.{SECRET}"
    assert token.startswith(body)
    assert len(token) == len(body) + 6
    assert domain.parse_token(token) == (mode, KEY_ID, SECRET)


def test_the_checksum_is_the_crc32_of_the_body_in_six_base62_characters() -> None:
    body, check = TOKEN[:-6], TOKEN[-6:]

    assert set(check) <= set(BASE62)
    assert from_base62(check) == zlib.crc32(body.encode())
    assert domain.checksum("") == "000000"


@given(position=st.integers(0, len(TOKEN) - 1), replacement=st.sampled_from(BASE62 + "._"))
def test_every_single_character_typo_is_refused_before_any_lookup(
    position: int, replacement: str
) -> None:
    assume(TOKEN[position] != replacement)
    typo = TOKEN[:position] + replacement + TOKEN[position + 1 :]

    with pytest.raises(Unauthenticated) as caught:
        domain.parse_token(typo)

    assert caught.value.reason == "API_KEY_INVALID"


def test_leaked_tokens_are_recognised_in_text_offline() -> None:
    _, token = issued(Peppers({1: "pepper"}))
    leak = f"export MAGICPIXELS_KEY={token}\n# and a lookalike: mp_live_ABC.{SECRET}"

    found = [match[0] for match in domain.TOKEN_PATTERN.finditer(leak)]

    assert found == [token]
    assert domain.checksum(found[0][:-6]) == found[0][-6:]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "mp_live_",
        "mp_live_ABC",
        "mp_live_ABC.",
        f"mp_live_.{SECRET}",
        TOKEN.replace("mp_live_", "mp_prod_"),
        TOKEN.replace("mp_live_", "MP_LIVE_"),
        TOKEN.replace("mp_live_", "sk_live_"),
        TOKEN[:-1],
        TOKEN + "a",
        TOKEN[:-6],
        TOKEN[:-6] + "000000",
        TOKEN.replace("mp_live_", "mp_test_"),
        TOKEN.replace("mp_live_01", "mp_live_0I"),
        TOKEN.replace(".", ".-"),
        TOKEN + "\n",
        " " + TOKEN,
        f"Bearer {TOKEN}",
        TOKEN[:-1] + "\u0661",  # a non-ASCII digit
        TOKEN.replace("mp_live_", "mp_live_key_"),
        TOKEN * 100,
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


def test_the_current_pepper_can_be_an_older_version_while_a_new_one_rolls_out() -> None:
    peppers = Peppers({1: "old", 2: "new"}, current=1)

    assert peppers.hash("secret") == domain.hash_secret("old", "secret")
    with pytest.raises(ValueError, match="pepper version 3 is not configured"):
        Peppers({1: "old", 2: "new"}, current=3)


def test_a_key_verified_under_an_older_pepper_is_rehashed_under_the_current_one() -> None:
    key, token = issued(Peppers({1: "old"}))
    peppers = Peppers({1: "old", 2: "new"})
    parsed = domain.parse_token(token)

    upgraded = domain.rehashed(key, parsed, peppers)

    assert upgraded is not None
    assert (upgraded.pepper_version, upgraded.id) == (2, key.id)
    assert upgraded.secret_hash == domain.hash_secret("new", parsed.secret)
    assert domain.authenticate(upgraded, parsed, peppers, NOW) == upgraded
    assert domain.rehashed(upgraded, parsed, peppers) is None


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


def test_a_key_made_by_an_expiring_key_expires_no_later_than_it() -> None:
    """Else an expiring key could outlive itself through a key it makes (a security review
    made one that never expired)."""
    issuer, _ = issued(Peppers({1: "p"}), expires_at=NOW + timedelta(hours=1))
    forever, _ = issued(Peppers({1: "p"}))
    sooner = NOW + timedelta(minutes=5)

    assert domain.grantable_expiry(issuer, None, NOW) == issuer.expires_at
    assert domain.grantable_expiry(issuer, sooner, NOW) == sooner
    assert domain.grantable_expiry(forever, None, NOW) is None
    assert domain.grantable_expiry(None, None, NOW) is None
    with pytest.raises(InvalidArgument) as caught:
        domain.grantable_expiry(issuer, NOW + timedelta(days=1), NOW)

    assert caught.value.param == "expires_at"
    assert "2026-11-25T13:00:00.000Z" in caught.value.message


def test_a_new_account_is_on_the_free_plan_with_a_webhook_secret() -> None:
    account = domain.new_account("Ada@Example.com", " Ada ", NOW)

    assert account.id.startswith("acct_")
    assert (account.email, account.name, account.plan) == ("ada@example.com", "Ada", "free")
    assert account.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(account.webhook_secret.removeprefix("whsec_"))) == 32


def issuer(mode: domain.Mode = "live", scopes: tuple[str, ...] = domain.SCOPES) -> ApiKey:
    key, _ = domain.issue_key("acct_1", "issuer", mode, scopes, Peppers({1: "p"}), NOW)
    return key


def test_a_key_without_an_issuer_gets_what_it_asks_for() -> None:
    assert domain.grantable_scopes(None, "live", []) == domain.SCOPES
    assert domain.grantable_scopes(None, "live", ["jobs:read"]) == ("jobs:read",)


def test_a_key_made_by_a_key_gets_at_most_the_issuers_scopes() -> None:
    narrow = issuer(scopes=("jobs:read", "keys:write"))

    assert domain.grantable_scopes(narrow, "live", []) == ("jobs:read", "keys:write")
    assert domain.grantable_scopes(narrow, "test", ["jobs:read"]) == ("jobs:read",)
    with pytest.raises(PermissionDenied) as caught:
        domain.grantable_scopes(narrow, "live", ["jobs:read", "jobs:write", "assets:read"])

    assert (caught.value.reason, caught.value.param) == ("SCOPE_MISSING", "scopes")
    assert "jobs:write, assets:read" in caught.value.message


def test_a_test_mode_key_makes_only_test_mode_keys() -> None:
    test_key = issuer(mode="test")

    assert domain.grantable_scopes(test_key, "test", []) == domain.SCOPES
    with pytest.raises(PermissionDenied) as caught:
        domain.grantable_scopes(test_key, "live", [])

    assert caught.value.reason == "TEST_KEY_NOT_ALLOWED"


def test_a_replaced_webhook_secret_is_valid_only_during_its_grace_period() -> None:
    account = replace(
        domain.new_account("ada@example.com", "Ada", NOW),
        previous_webhook_secret="whsec_old",
        previous_webhook_secret_expires_at=NOW + timedelta(hours=1),
    )

    assert account.webhook_secrets(NOW) == (account.webhook_secret, "whsec_old")
    assert account.webhook_secrets(NOW + timedelta(hours=1)) == (account.webhook_secret, None)


@pytest.mark.parametrize(
    ("grace", "expected"),
    [
        (None, timedelta(hours=24)),
        (timedelta(0), timedelta(0)),
        (timedelta(days=7), timedelta(days=7)),
    ],
)
def test_grace_periods_default_to_a_day_and_reach_a_week(
    grace: timedelta | None, expected: timedelta
) -> None:
    assert domain.checked_grace_period(grace) == expected


@pytest.mark.parametrize("grace", [timedelta(seconds=-1), timedelta(days=7, seconds=1)])
def test_grace_periods_outside_a_week_are_refused(grace: timedelta) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.checked_grace_period(grace)

    assert caught.value.param == "grace_period_seconds"
