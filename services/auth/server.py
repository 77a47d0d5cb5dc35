"""The AuthService servicer and the auth Service that runs it."""

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.core import paging
from magicpixels.core.server import ServiceBinding
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import AuthSettings, secret_value
from magicpixels.core.timestamps import from_timestamp, to_timestamp, utcnow
from magicpixels.services.auth import domain, store
from magicpixels.services.auth.domain import Account, ApiKey, Mode, Peppers

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
_MIGRATIONS = "magicpixels.services.auth.migrations"


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, engine: AsyncEngine, peppers: Peppers) -> None:
        self._engine = engine
        self._peppers = peppers

    async def CreateAccount(
        self, request: auth_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateAccountResponse:
        now = utcnow()
        account = domain.new_account(request.email, request.name, now)
        key, token = domain.issue_key(
            account.id, domain.FIRST_KEY_NAME, "live", domain.SCOPES, self._peppers, now
        )
        await store.create_account(self._engine, account, key)
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
        key, token = domain.issue_key(
            request.account_id,
            request.name,
            _mode(request.mode),
            domain.checked_scopes(request.scopes),
            self._peppers,
            now,
            domain.checked_expiry(expires_at, now),
        )
        await store.add_api_key(self._engine, key)
        return auth_pb2.CreateApiKeyResponse(api_key=_api_key_message(key), token=token)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListApiKeysResponse:
        size = paging.page_size(request.page_size)
        keys = await store.list_api_keys(
            self._engine, request.account_id, size + 1, request.page_token
        )
        found, next_page_token = paging.page(keys, size)
        return auth_pb2.ListApiKeysResponse(
            api_keys=[_api_key_message(key) for key in found], next_page_token=next_page_token
        )

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ApiKey:
        key = await store.revoke_api_key(self._engine, request.account_id, request.id, utcnow())
        return _api_key_message(key)

    async def VerifyApiKey(
        self, request: auth_pb2.VerifyApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Principal:
        token = domain.parse_token(request.token)
        found = await store.find_api_key(self._engine, token.key_id)
        key = domain.authenticate(found, token, self._peppers, utcnow())
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
        return auth_pb2.WebhookSecret(account_id=account.id, secret=account.webhook_secret)


def _mode(mode: auth_pb2.KeyMode.ValueType) -> Mode:
    """Unspecified means live, the mode of every key the API creates without asking."""
    return "test" if mode == auth_pb2.KEY_MODE_TEST else "live"


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

    async def start(self) -> list[ServiceBinding]:
        self._engine = await open_database(
            self._mesh.settings, self.settings, self.name, _MIGRATIONS
        )
        pepper = secret_value(self.settings.pepper, self._mesh.settings.data_dir, "auth_pepper")
        servicer = AuthServicer(self._engine, Peppers({domain.PEPPER_VERSION: pepper}))
        return [
            ServiceBinding(SERVICE_NAME, servicer, auth_pb2_grpc.add_AuthServiceServicer_to_server)
        ]

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
