"""What the routes share: stubs to every service, the principal cache, the settings."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property

from fastapi import Request

from magicpixels.assets.v1 import assets_pb2_grpc
from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.billing.v1 import billing_pb2_grpc
from magicpixels.core import eventloop, metrics
from magicpixels.core.service import Mesh
from magicpixels.core.settings import GatewaySettings
from magicpixels.gateway.job_views import JobViews
from magicpixels.gateway.principal import Principal, PrincipalCache, follow_revocations
from magicpixels.gateway.ratelimit import Limiter
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.auth.domain import parse_token
from magicpixels.services.jobs.public import ContentUrls


@dataclass
class Gateway:
    mesh: Mesh
    settings: GatewaySettings
    principals: PrincipalCache = field(init=False)
    # Set when the gateway begins to stop: long polls answer with what they have and event
    # streams end, rather than being cut at the end of the grace period (a 500, a torn stream).
    draining: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    limiter: Limiter = field(init=False)
    job_views: JobViews = field(init=False)

    def __post_init__(self) -> None:
        self.principals = PrincipalCache(self.settings.key_cache_seconds)
        self.job_views = JobViews(self.settings.job_cache_seconds)
        self.limiter = Limiter(
            self.mesh.settings.redis_url, self.settings.rate_limit_redis_failure == "open"
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the app serves, revocations and job changes are followed into its memory."""
        # Unfollowed, a cache keeps nothing: every request asks the service that owns what it
        # would keep, as it must when that service's announcements cannot reach this process
        # (no Redis, the service served elsewhere).
        followers = []
        if self.mesh.hears("auth"):
            followers.append(
                asyncio.create_task(follow_revocations(self.mesh.bus, self.principals))
            )
        if self.mesh.hears("jobs"):
            followers.append(asyncio.create_task(self.job_views.follow(self.mesh.bus)))
        try:
            yield
        finally:
            for following in followers:
                await eventloop.stopped(following)
            await self.limiter.close()

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
        """Who the token speaks for: a malformed token (checksum included) is refused here,
        one verified lately comes from memory, any other is verified by auth."""
        key_id = parse_token(token).key_id
        cached = self.principals.get_principal(key_id, token)
        metrics.KEY_CACHE_LOOKUPS.labels("gateway", "miss" if cached is None else "hit").inc()
        if cached is not None:
            return cached
        ticket = self.principals.ticket()
        verified = await self.auth.VerifyApiKey(auth_pb2.VerifyApiKeyRequest(token=token))
        return self.principals.put_verified(key_id, token, verified, ticket)

    @cached_property
    def content_urls(self) -> ContentUrls:
        return ContentUrls(self.assets, self.settings.base_url())

    async def result_url(self, job: jobs_pb2.Job) -> tuple[str, str] | None:
        """A signed URL of a completed job's result; None once its owner deleted the asset."""
        return await self.content_urls.of_result(job, self.settings.result_url_seconds)

    async def signed_content_url(
        self, asset_id: str, account_id: str, expires_in: int, livemode: bool | None = None
    ) -> tuple[str, str]:
        """A URL of the asset's content that works without a key until it expires."""
        return await self.content_urls.signed(asset_id, account_id, expires_in, livemode)


def gateway(request: Request) -> Gateway:
    """What the app serving this request shares (set by `create_app`)."""
    shared: Gateway = request.app.state.gateway
    return shared
