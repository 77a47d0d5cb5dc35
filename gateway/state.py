"""What the routes share: stubs to every service, the principal cache, the settings."""

from dataclasses import dataclass, field
from functools import cached_property

import grpc
from fastapi import Request

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.billing.v1 import billing_pb2_grpc
from magicpixels.core.service import Mesh
from magicpixels.core.settings import GatewaySettings
from magicpixels.core.timestamps import from_timestamp, rfc3339
from magicpixels.gateway.principal import Principal, PrincipalCache
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc


@dataclass
class Gateway:
    mesh: Mesh
    settings: GatewaySettings
    principals: PrincipalCache = field(init=False)

    def __post_init__(self) -> None:
        self.principals = PrincipalCache(self.settings.key_cache_seconds)

    @cached_property
    def auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(self.mesh.channel("auth"))

    @cached_property
    def billing(self) -> billing_pb2_grpc.BillingServiceStub:
        return billing_pb2_grpc.BillingServiceStub(self.mesh.channel("billing"))

    @cached_property
    def assets(self) -> assets_pb2_grpc.AssetsServiceStub:
        return assets_pb2_grpc.AssetsServiceStub(self.mesh.channel("assets"))

    @cached_property
    def jobs(self) -> jobs_pb2_grpc.JobsServiceStub:
        return jobs_pb2_grpc.JobsServiceStub(self.mesh.channel("jobs"))

    async def principal(self, token: str) -> Principal:
        cached = self.principals.get(token)
        if cached is not None:
            return cached
        verified = await self.auth.VerifyApiKey(auth_pb2.VerifyApiKeyRequest(token=token))
        return self.principals.put(token, verified)

    async def result_url(self, job: jobs_pb2.Job) -> tuple[str, str] | None:
        """A signed URL of a completed job's result; None once its owner deleted the asset."""
        try:
            return await self.signed_content_url(
                job.result.asset_id, job.account_id, self.settings.result_url_seconds
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def signed_content_url(
        self, asset_id: str, account_id: str, expires_in: int
    ) -> tuple[str, str]:
        """A URL of the asset's content that works without a key until it expires."""
        signed = await self.assets.SignUrl(
            assets_pb2.SignUrlRequest(
                id=asset_id, account_id=account_id, expires_in_seconds=expires_in
            )
        )
        url = f"{self.settings.base_url()}/v1/assets/{asset_id}/content?{signed.query}"
        return url, rfc3339(from_timestamp(signed.expire_time))


def gateway(request: Request) -> Gateway:
    """What the app serving this request shares (set by `create_app`)."""
    shared: Gateway = request.app.state.gateway
    return shared
