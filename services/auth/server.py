"""The AuthService servicer and the auth Service that runs it."""

import asyncio

import grpc
import structlog
from google.protobuf.message import Message
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.core import eventloop, idempotency, paging
from magicpixels.core.bus import EventBus
from magicpixels.core.errors import NotFound
from magicpixels.core.server import ServiceBinding
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import AuthSettings, secret_value
from magicpixels.core.timestamps import from_timestamp, to_timestamp, utcnow
from magicpixels.services.auth import domain, store
from magicpixels.services.auth.domain import Account, ApiKey, Mode, Peppers
from magicpixels.services.auth.key_reads import KeyReader
from magicpixels.services.auth.usage import UsageMarks

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
_MIGRATIONS = "magicpixels.services.auth.migrations"

log = structlog.get_logger("magicpixels.auth")


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        engine: AsyncEngine,
        keys: KeyReader,
        peppers: Peppers,
        bus: EventBus,
        usage: UsageMarks,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._peppers = peppers
        self._bus = bus
        self._usage = usage

    async def CreateAccount(
        self, request: auth_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateAccountResponse:
        now = utcnow()
        account = domain.new_account(request.email, request.name, now)
        key, token = domain.issue_key(
            account.id, domain.FIRST_KEY_NAME, "live", domain.SCOPES, self._peppers, now
        )
        # The request as it is meant: an email differing only in case is the same signup.
        asked = auth_pb2.CreateAccountRequest(email=account.email, name=account.name)
        scope = domain.signup_scope(account.email)
        claim = self._key_claim(request.idempotency_key, asked, scope, token)
        earlier = await store.create_account(self._engine, account, key, claim)
        if earlier is not None:
            assert claim is not None  # only a claimed key stops the insert
            key, token = self._replay(claim, earlier, context)
            account = await store.get_account(self._engine, key.account_id)
        return auth_pb2.CreateAccountResponse(
            account=_account_message(account),
            api_key=_api_key_message(key),
            token=token,
            webhook_secret=account.webhook_secret,
        )

    async def GetAccount(
        self, request: auth_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Account:
        return _account_message(await store.get_account(self._engine, request.id))

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateApiKeyResponse:
        now = utcnow()
        expires_at = (
            from_timestamp(request.expire_time) if request.HasField("expire_time") else None
        )
        mode = _mode(request.mode)
        issuer = await self._issuer(request.account_id, request.issuer_api_key_id)
        key, token = domain.issue_key(
            request.account_id,
            request.name,
            mode,
            domain.grantable_scopes(issuer, mode, request.scopes),
            self._peppers,
            now,
            domain.grantable_expiry(issuer, expires_at, now),
        )
        asked = auth_pb2.CreateApiKeyRequest()
        asked.CopyFrom(request)
        asked.ClearField("idempotency_key")
        scope = domain.account_scope(request.account_id)
        claim = self._key_claim(request.idempotency_key, asked, scope, token)
        earlier = await store.add_api_key(self._engine, key, claim)
        if earlier is not None:
            assert claim is not None  # only a claimed key stops the insert
            key, token = self._replay(claim, earlier, context)
        return auth_pb2.CreateApiKeyResponse(api_key=_api_key_message(key), token=token)

    def _key_claim(self, key: str, asked: Message, scope: str, token: str) -> store.KeyClaim | None:
        """The claim of an Idempotency-Key on the new API key, for the request `asked` (what it
        asks for, without the key), its token sealed; None without a key."""
        claim = idempotency.claim(key, asked)
        if claim is None:
            return None
        return store.KeyClaim(scope, claim, self._peppers.seal(token, _sealed_in(scope, claim)))

    def _replay(
        self, claim: store.KeyClaim, earlier: store.Claimed, context: grpc.aio.ServicerContext
    ) -> tuple[ApiKey, str]:
        """The key an earlier request with the same Idempotency-Key made, as it is now, and its
        token, if this is the same request."""
        idempotency.check_same_request(claim.claim, earlier.request_hash)
        context.set_trailing_metadata(idempotency.REPLAYED)
        token = self._peppers.unseal(earlier.token, _sealed_in(claim.scope, claim.claim))
        return earlier.key, token

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListApiKeysResponse:
        size = paging.page_size(request.page_size)
        keys = await store.list_api_keys(
            self._engine,
            request.account_id,
            size + 1,
            request.page_token,
            _mode_filter(request.mode),
        )
        found, next_page_token = paging.page(keys, size)
        return auth_pb2.ListApiKeysResponse(
            api_keys=[_api_key_message(key) for key in found], next_page_token=next_page_token
        )

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ApiKey:
        key = await store.revoke_api_key(
            self._engine, request.account_id, request.id, utcnow(), _mode_filter(request.mode)
        )
        await self._announce_revoked(key.id)
        return _api_key_message(key)

    async def VerifyApiKey(
        self, request: auth_pb2.VerifyApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Principal:
        now = utcnow()
        token = domain.parse_token(request.token)
        found = await self._keys.find(token.key_id)
        key = domain.authenticate(found, token, self._peppers, now)
        self._usage.note(key.id, now)
        upgraded = domain.rehashed(key, token, self._peppers)
        if upgraded is not None:
            await store.rehash_api_key(self._engine, upgraded, key.pepper_version)
        return auth_pb2.Principal(
            account_id=key.account_id,
            api_key_id=key.id,
            livemode=key.livemode,
            scopes=key.scopes,
            expire_time=to_timestamp(key.expires_at),
        )

    async def GetWebhookSecret(
        self, request: auth_pb2.GetWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.WebhookSecret:
        account = await store.get_account(self._engine, request.account_id)
        return _webhook_secret_message(account)

    async def RotateWebhookSecret(
        self, request: auth_pb2.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.WebhookSecret:
        grace = request.grace_period.ToTimedelta() if request.HasField("grace_period") else None
        expires_at = utcnow() + domain.checked_grace_period(grace)
        account = await store.rotate_webhook_secret(
            self._engine, request.account_id, domain.new_webhook_secret(), expires_at
        )
        return _webhook_secret_message(account)

    async def _issuer(self, account_id: str, key_id: str) -> ApiKey | None:
        """The account's usable key that asks for a new one; None when no key asks."""
        if not key_id:
            return None
        found = await self._keys.find(key_id)
        if found is None or found.account_id != account_id:
            raise NotFound("API_KEY_NOT_FOUND", f"no API key {key_id}")
        return domain.usable(found, utcnow())

    async def _announce_revoked(self, key_id: str) -> None:
        """Tells every gateway to drop the key from its cache now rather than when it expires."""
        try:
            await self._bus.publish(domain.REVOKED_KEYS_CHANNEL, key_id.encode())
        except RedisError:
            # Committed all the same; caches then drop the key within their time to live.
            log.warning("revocation_not_announced", api_key_id=key_id, exc_info=True)


def _sealed_in(scope: str, claim: idempotency.Claim) -> str:
    """What a sealed token is bound to: the claim that keeps it."""
    return f"{scope}\n{claim.key}"


def _mode(mode: auth_pb2.KeyMode.ValueType) -> Mode:
    """Unspecified means live, the mode of every key the API creates without asking."""
    return "test" if mode == auth_pb2.KEY_MODE_TEST else "live"


def _mode_filter(mode: auth_pb2.KeyMode.ValueType) -> Mode | None:
    """Unspecified means either mode."""
    return None if mode == auth_pb2.KEY_MODE_UNSPECIFIED else _mode(mode)


def _webhook_secret_message(account: Account) -> auth_pb2.WebhookSecret:
    secret, previous = account.webhook_secrets(utcnow())
    previous_expires = account.previous_webhook_secret_expires_at if previous else None
    return auth_pb2.WebhookSecret(
        account_id=account.id,
        secret=secret,
        previous_secret=previous or "",
        previous_expire_time=to_timestamp(previous_expires),
    )


def _account_message(account: Account) -> auth_pb2.Account:
    return auth_pb2.Account(
        id=account.id,
        email=account.email,
        name=account.name,
        plan=account.plan,
        create_time=to_timestamp(account.created_at),
    )


def _api_key_message(key: ApiKey) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        id=key.id,
        account_id=key.account_id,
        name=key.name,
        mode=auth_pb2.KEY_MODE_LIVE if key.livemode else auth_pb2.KEY_MODE_TEST,
        scopes=key.scopes,
        prefix=key.prefix,
        create_time=to_timestamp(key.created_at),
        expire_time=to_timestamp(key.expires_at),
        revoke_time=to_timestamp(key.revoked_at),
        last_use_time=to_timestamp(key.last_used_at),
    )


class AuthService:
    name = "auth"

    def __init__(self, mesh: Mesh, settings: AuthSettings) -> None:
        self.settings = settings
        self._mesh = mesh
        self._engine: AsyncEngine | None = None
        self._keys: KeyReader | None = None
        self._usage: UsageMarks | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._forgetting: asyncio.Task[None] | None = None

    async def start(self) -> list[ServiceBinding]:
        peppers = self._peppers()
        self._engine = await open_database(
            self._mesh.settings, self.settings, self.name, _MIGRATIONS
        )
        self._keys = KeyReader(self._engine)
        self._usage = UsageMarks(self._engine, self.settings.last_used_flush_seconds)
        self._flushing = asyncio.create_task(self._usage.run())
        forgetting = idempotency.keep_forgetting(self._engine, store.idempotency_keys)
        self._forgetting = asyncio.create_task(forgetting)
        servicer = AuthServicer(self._engine, self._keys, peppers, self._mesh.bus, self._usage)
        return [
            ServiceBinding(SERVICE_NAME, servicer, auth_pb2_grpc.add_AuthServiceServicer_to_server)
        ]

    def _peppers(self) -> Peppers:
        first = secret_value(self.settings.pepper, self._mesh.settings.data_dir, "auth_pepper")
        later = {version: s.get_secret_value() for version, s in self.settings.peppers.items()}
        return Peppers({domain.FIRST_PEPPER_VERSION: first, **later}, self.settings.pepper_version)

    async def close(self) -> None:
        await eventloop.stopped(self._forgetting)
        if self._flushing is not None and self._usage is not None:
            await eventloop.stopped(self._flushing)
            await self._usage.flush()
        if self._keys is not None:
            await self._keys.close()
        if self._engine is not None:
            await self._engine.dispose()
