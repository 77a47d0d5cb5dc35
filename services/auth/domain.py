"""The rules of accounts and API keys: the token format, keyed secret hashes, scopes, validation.

A token is `mp_<mode>_<key id without "key_">.<secret><checksum>`: the key id is public and finds
the key, the secret is stored only as HMAC-SHA256 under a server-side pepper, and the checksum
(CRC32 of everything before it, 6 base62 characters, as GitHub's tokens carry) lets a mistyped
token be refused before any lookup and a leaked one be recognised offline (`TOKEN_PATTERN`).
Each stored hash records the pepper version it was made with, so a new pepper can be introduced
without invalidating keys; a key verified under an older pepper is hashed again under the
current one.

A key made by a request with an Idempotency-Key keeps its token for that request's replays
(24 hours), sealed with AES-GCM under a key derived from the pepper: the database alone does
not give it away.
"""

import base64
import hashlib
import hmac
import re
import secrets
import string
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from magicpixels.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from magicpixels.core.ids import new_id
from magicpixels.core.timestamps import rfc3339

Mode = Literal["live", "test"]

SCOPES: tuple[str, ...] = (
    "jobs:read",
    "jobs:write",
    "assets:read",
    "assets:write",
    "account:read",
    "keys:write",
)
KEY_ID_PREFIX = "key_"
FIRST_KEY_NAME = "default"
DEFAULT_PLAN = "free"
FIRST_PEPPER_VERSION = 1
SECRET_LENGTH = 43  # 43 base62 characters carry 256 bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: a CRC32 fits
MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200
DEFAULT_WEBHOOK_GRACE = timedelta(hours=24)
MAX_WEBHOOK_GRACE = timedelta(days=7)
# Where the auth service announces revoked keys (the key id), for caches to drop them.
REVOKED_KEYS_CHANNEL = "auth.api_keys.revoked"

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Key ids are 30 Crockford base32 characters (magicpixels.core.ids).
TOKEN_PATTERN = re.compile(
    rf"mp_(live|test)_([0-9A-HJKMNP-TV-Z]{{30}})\.([0-9A-Za-z]{{{SECRET_LENGTH}}})"
    rf"([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
_INVALID_KEY_MESSAGE = "the API key is not valid"
# The key id's 10 time characters and 4 random ones: keys made together still look different.
_DISPLAYED_KEY_CHARS = 14


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    name: str
    plan: str
    webhook_secret: str
    created_at: datetime
    # The secret a rotation replaced, valid until `previous_webhook_secret_expires_at`.
    previous_webhook_secret: str | None = None
    previous_webhook_secret_expires_at: datetime | None = None

    def webhook_secrets(self, now: datetime) -> tuple[str, str | None]:
        """The current signing secret and, while its grace period lasts, the one it replaced."""
        expires = self.previous_webhook_secret_expires_at
        in_grace = expires is not None and expires > now
        return self.webhook_secret, self.previous_webhook_secret if in_grace else None


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    mode: Mode
    scopes: tuple[str, ...]
    secret_hash: str
    pepper_version: int
    prefix: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def livemode(self) -> bool:
        return self.mode == "live"


class ParsedToken(NamedTuple):
    mode: Mode
    key_id: str
    secret: str


class Peppers:
    """The HMAC keys of stored secrets by version; new secrets use `current` (else the newest).

    An operator adds a version everywhere first and makes it current after, so no replica meets
    a hash made with a pepper it does not know yet.
    """

    def __init__(self, by_version: Mapping[int, str], current: int | None = None) -> None:
        self._by_version = dict(by_version)
        self.current = max(self._by_version) if current is None else current
        if self.current not in self._by_version:
            known = ", ".join(str(version) for version in sorted(self._by_version))
            raise ValueError(f"pepper version {self.current} is not configured (known: {known})")

    def hash(self, secret: str) -> str:
        """The hash of a new secret, made with the current pepper."""
        return hash_secret(self._by_version[self.current], secret)

    def matches(self, secret: str, version: int, stored_hash: str) -> bool:
        pepper = self._by_version.get(version)
        return pepper is not None and hmac.compare_digest(hash_secret(pepper, secret), stored_hash)

    def seal(self, token: str, context: str) -> "SealedToken":
        """`token` encrypted under the current pepper, bound to `context` (where it is kept)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = _sealing(self._by_version[self.current]).encrypt(
            nonce, token.encode(), context.encode()
        )
        return SealedToken(nonce + sealed, self.current)

    def unseal(self, sealed: "SealedToken", context: str) -> str:
        pepper = self._by_version[sealed.pepper_version]
        nonce, data = sealed.data[:_NONCE_BYTES], sealed.data[_NONCE_BYTES:]
        return _sealing(pepper).decrypt(nonce, data, context.encode()).decode()


@dataclass(frozen=True)
class SealedToken:
    """A token kept for the replays of the request that made it, and its pepper's version."""

    data: bytes
    pepper_version: int


_NONCE_BYTES = 12


def _sealing(pepper: str) -> AESGCM:
    """The AES-256-GCM key of sealed tokens: the pepper's HMAC of a fixed label, so that it is
    not the key that hashes secrets."""
    return AESGCM(hmac.new(pepper.encode(), b"magicpixels sealed token", hashlib.sha256).digest())


def hash_secret(pepper: str, secret: str) -> str:
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def new_secret() -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(SECRET_LENGTH))


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def checksum(body: str) -> str:
    """CRC32 of the token's body in base62, 6 characters: catches typos, proves nothing."""
    value = zlib.crc32(body.encode())
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def format_token(mode: Mode, key_id: str, secret: str) -> str:
    body = f"mp_{mode}_{key_id.removeprefix(KEY_ID_PREFIX)}.{secret}"
    return body + checksum(body)


def parse_token(token: str) -> ParsedToken:
    """The parts of a well-formed token whose checksum holds; anything else is refused here,
    before any lookup (pure Python: the gateway runs it too)."""
    match = TOKEN_PATTERN.fullmatch(token)
    if match is None or checksum(token[:-CHECKSUM_LENGTH]) != match[4]:
        raise Unauthenticated("API_KEY_INVALID", _INVALID_KEY_MESSAGE)
    mode, key_part, secret, _ = match.groups()
    return ParsedToken("live" if mode == "live" else "test", KEY_ID_PREFIX + key_part, secret)


def display_prefix(mode: Mode, key_id: str) -> str:
    """The start of the key's token, enough to tell keys apart; it reveals no secret."""
    return f"mp_{mode}_{key_id.removeprefix(KEY_ID_PREFIX)[:_DISPLAYED_KEY_CHARS]}..."


def authenticate(key: ApiKey | None, token: ParsedToken, peppers: Peppers, now: datetime) -> ApiKey:
    """The key the token speaks for; an unknown key and a wrong secret fail the same way."""
    if key is None or key.mode != token.mode:
        raise Unauthenticated("API_KEY_INVALID", _INVALID_KEY_MESSAGE)
    if not peppers.matches(token.secret, key.pepper_version, key.secret_hash):
        raise Unauthenticated("API_KEY_INVALID", _INVALID_KEY_MESSAGE)
    return usable(key, now)


def usable(key: ApiKey, now: datetime) -> ApiKey:
    """The key, unless it was revoked or has expired."""
    if key.revoked_at is not None:
        raise Unauthenticated("API_KEY_REVOKED", "the API key was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthenticated("API_KEY_EXPIRED", "the API key has expired")
    return key


def rehashed(key: ApiKey, token: ParsedToken, peppers: Peppers) -> ApiKey | None:
    """The key hashed under the current pepper, when a verified token shows it is older."""
    if key.pepper_version == peppers.current:
        return None
    return replace(key, secret_hash=peppers.hash(token.secret), pepper_version=peppers.current)


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not _looks_like_email(email):
        raise InvalidArgument("PARAMETER_INVALID", "email must be a valid address", param="email")
    return email


def _looks_like_email(email: str) -> bool:
    """Deliberately loose: one @, a local part, a dotted domain; the mailbox is never checked."""
    local, _, domain = email.partition("@")
    labels = domain.split(".")
    return (
        bool(local)
        and len(labels) >= 2
        and all(labels)
        and "@" not in domain
        and len(email) <= MAX_EMAIL_LENGTH
        and not any(char.isspace() for char in email)
    )


def checked_name(name: str) -> str:
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        message = f"name must be at most {MAX_NAME_LENGTH} characters"
        raise InvalidArgument("PARAMETER_INVALID", message, param="name")
    return name


def checked_scopes(requested: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes in canonical order; none requested means every scope."""
    wanted = set(requested)
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        message = f"unknown scopes {', '.join(unknown)}; known: {' '.join(SCOPES)}"
        raise InvalidArgument("PARAMETER_INVALID", message, param="scopes")
    return tuple(scope for scope in SCOPES if scope in wanted) if wanted else SCOPES


def grantable_scopes(
    issuer: ApiKey | None, mode: Mode, requested: Iterable[str]
) -> tuple[str, ...]:
    """The scopes of a new key that `issuer` asks for: no more than it holds itself (none
    requested means all of its own), and from a test-mode issuer only a test-mode key."""
    wanted = tuple(requested)
    if issuer is None:
        return checked_scopes(wanted)
    if mode == "live" and not issuer.livemode:
        message = "a test-mode API key can create only test-mode keys"
        raise PermissionDenied("TEST_KEY_NOT_ALLOWED", message)
    if not wanted:
        return issuer.scopes
    scopes = checked_scopes(wanted)
    missing = [scope for scope in scopes if scope not in issuer.scopes]
    if missing:
        message = f"this API key cannot grant {', '.join(missing)}, which it does not hold"
        raise PermissionDenied("SCOPE_MISSING", message, param="scopes")
    return scopes


def checked_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    if expires_at is not None and expires_at <= now:
        message = "expires_at must be in the future"
        raise InvalidArgument("PARAMETER_INVALID", message, param="expires_at")
    return expires_at


def grantable_expiry(
    issuer: ApiKey | None, expires_at: datetime | None, now: datetime
) -> datetime | None:
    """When a new key that `issuer` asks for expires: as it asks, but no later than the issuer
    (unset: with it), so an expiring key cannot outlive itself through a key it makes."""
    checked = checked_expiry(expires_at, now)
    if issuer is None or issuer.expires_at is None:
        return checked
    if checked is None:
        return issuer.expires_at
    if checked > issuer.expires_at:
        message = (
            f"expires_at must be no later than {rfc3339(issuer.expires_at)}, "
            "when the API key creating it expires"
        )
        raise InvalidArgument("PARAMETER_INVALID", message, param="expires_at")
    return checked


def checked_grace_period(grace: timedelta | None) -> timedelta:
    """How long a replaced webhook secret stays valid: 0 to 7 days, 24 hours when unset."""
    if grace is None:
        return DEFAULT_WEBHOOK_GRACE
    if not timedelta(0) <= grace <= MAX_WEBHOOK_GRACE:
        message = f"grace_period_seconds must be between 0 and {MAX_WEBHOOK_GRACE.days * 86400}"
        raise InvalidArgument("PARAMETER_INVALID", message, param="grace_period_seconds")
    return grace


def signup_scope(email: str) -> str:
    """Where a signup's Idempotency-Key is claimed: its email (normalized), as it has no
    account yet. A replay hands out the first key's token again, so the key, like a UUID,
    should be unguessable."""
    return f"email:{normalize_email(email)}"


def account_scope(account_id: str) -> str:
    """Where the Idempotency-Key of a key made for the account is claimed."""
    return f"account:{account_id}"


def new_account(email: str, name: str, now: datetime) -> Account:
    return Account(
        id=new_id("acct"),
        email=normalize_email(email),
        name=checked_name(name),
        plan=DEFAULT_PLAN,
        webhook_secret=new_webhook_secret(),
        created_at=now,
    )


def issue_key(
    account_id: str,
    name: str,
    mode: Mode,
    scopes: tuple[str, ...],
    peppers: Peppers,
    now: datetime,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its token; the token is stored only sealed, for an idempotent request's
    replays (`Peppers.seal`)."""
    key_id = new_id("key")
    secret = new_secret()
    key = ApiKey(
        id=key_id,
        account_id=account_id,
        name=checked_name(name),
        mode=mode,
        scopes=scopes,
        secret_hash=peppers.hash(secret),
        pepper_version=peppers.current,
        prefix=display_prefix(mode, key_id),
        created_at=now,
        expires_at=expires_at,
    )
    return key, format_token(mode, key_id, secret)
