"""The webhook dispatcher: sends the outbox's deliveries to their receivers, signed as Standard
Webhooks says, at least once, each job's in order.

A delivery is claimed one attempt at a time, so any number of jobs processes may dispatch. The
receiver's host is resolved here and the request goes to the address the WebhookPolicy allowed
(TLS still verifies the host name), so DNS cannot swap in another address between the check
and the connection. An attempt that fails is tried again by the retry schedule, or later when
the receiver's Retry-After asks; when the schedule is spent the delivery is given up.
"""

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
import httpx
import structlog
from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.assets.v1 import assets_pb2_grpc
from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.core import metrics, tracing
from magicpixels.core.context import set_deadline
from magicpixels.core.errors import Unavailable
from magicpixels.core.service import Mesh
from magicpixels.core.settings import GatewaySettings, JobsSettings
from magicpixels.core.timestamps import rfc3339, utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import public, store
from magicpixels.services.jobs.domain import (
    DeliveryState,
    IPAddress,
    WebhookPolicy,
    WebhookTarget,
    ip_literal,
    next_delivery_delay,
    parse_retry_after,
    webhook_signature,
    webhook_target,
)
from magicpixels.services.jobs.signals import QueueSignal
from magicpixels.services.jobs.store import DeliveryRow

# What an attempt may spend besides waiting for the receiver: resolving its host, asking auth
# for the secret and assets for the result URL.
_PREPARE_SECONDS = 10.0
# Hints are lossy: with nothing due, the dispatcher still looks at the outbox this often.
IDLE_SECONDS = 30.0
# After an attempt's own time is up, its claim lasts this much longer: no other dispatcher
# takes the delivery over while this one records how the attempt went.
_CLAIM_MARGIN_SECONDS = 5.0
USER_AGENT = "MagicPixels-Webhooks/1"

log = structlog.get_logger("magicpixels.jobs")


@dataclass(frozen=True)
class Outcome:
    """How one attempt went. PENDING: it failed, and may be tried again."""

    state: DeliveryState
    status: int | None = None
    error: str | None = None
    retry_after: timedelta | None = None


def failed(error: str) -> Outcome:
    return Outcome(DeliveryState.PENDING, error=error)


def refused(error: str) -> Outcome:
    return Outcome(DeliveryState.REFUSED, error=error)


def answered(status: int, retry_after: str | None, now: datetime) -> Outcome:
    """A receiver's answer: any 2xx delivers; anything else, a redirect too, is a failure."""
    if 200 <= status < 300:
        return Outcome(DeliveryState.DELIVERED, status=status)
    return Outcome(
        DeliveryState.PENDING, status=status, retry_after=parse_retry_after(retry_after, now)
    )


def payload(delivery: DeliveryRow, data: dict[str, Any]) -> bytes:
    """The body of a delivery: the event, when it happened, and the job as it left it."""
    event = {"type": delivery.event_type, "timestamp": rfc3339(delivery.created_at), "data": data}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookDispatcher:
    def __init__(self, engine: AsyncEngine, mesh: Mesh, settings: JobsSettings) -> None:
        self._engine = engine
        self._mesh = mesh
        self._settings = settings
        # Result URLs as the gateway signs them: on its public origin, for as long.
        gateway = GatewaySettings()
        self._public_url = settings.public_url or gateway.base_url()
        self._result_url_seconds = gateway.result_url_seconds
        self._policy = WebhookPolicy.allowing(settings.webhook_allowed_hosts)
        self._attempt_seconds = settings.webhook_timeout_seconds + _PREPARE_SECONDS
        self._claim_for = timedelta(seconds=self._attempt_seconds + _CLAIM_MARGIN_SECONDS)
        self._signal = QueueSignal()
        self._in_flight: dict[asyncio.Task[None], DeliveryRow] = {}
        # A connection per attempt: a kept-alive one would carry another host's requests
        # over a TLS session verified for the first.
        self._http = httpx.AsyncClient(
            timeout=settings.webhook_timeout_seconds,
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
            headers={"user-agent": USER_AGENT},
        )

    async def follow(self, hints: AsyncIterator[bytes]) -> None:
        """Looks for due deliveries on every hint that one was enqueued, by any jobs process."""
        await self._signal.follow(hints)

    async def run(self) -> None:
        """Starts each delivery as it falls due, as many at once as the settings allow."""
        while True:
            ticket = self._signal.ticket()
            try:
                wait = await self._dispatch_due()
            except Exception:  # the database is down: look again later
                log.exception("webhook_dispatch_failed")
                wait = self._settings.reconcile_interval_seconds
            await self._signal.wait(ticket, wait)

    async def close(self) -> None:
        """Stops the attempts in flight and frees their claims: another dispatcher, or this one
        started again, makes them again at once. (A dispatcher that dies frees none: its claims
        lapse.)"""
        cut_short = list(self._in_flight.values())
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        try:
            await store.release_claims(self._engine, cut_short)
        except Exception:  # the database is down: the claims lapse instead
            log.exception("webhook_claims_not_released")
        await self._http.aclose()

    async def _dispatch_due(self) -> float:
        """Starts the due deliveries there is room for; the seconds until one may be due next."""
        while len(self._in_flight) < self._settings.webhook_concurrency:
            claimed = await store.claim_delivery(self._engine, self._claim_for, utcnow())
            if claimed is None:
                break
            task = asyncio.create_task(self._deliver(claimed))
            self._in_flight[task] = claimed
            task.add_done_callback(self._forget)
        if len(self._in_flight) >= self._settings.webhook_concurrency:
            return IDLE_SECONDS  # an attempt that ends notifies the signal
        now = utcnow()
        due = await store.next_delivery_time(self._engine, now)
        if due is None:
            return IDLE_SECONDS
        return min(max((due - now).total_seconds(), 0.0), IDLE_SECONDS)

    def _forget(self, task: asyncio.Task[None]) -> None:
        del self._in_flight[task]

    async def _deliver(self, delivery: DeliveryRow) -> None:
        attributes = {"magicpixels.webhook.event_type": delivery.event_type}
        try:
            # In the trace of the request that created the job, which the receiver may join.
            with (
                tracing.joined(_trace_parent(delivery)),
                tracing.span("jobs.deliver_webhook", attributes),
            ):
                outcome = await self._attempt_in_time(delivery)
                await self._record(delivery, outcome)
        except Exception:  # its claim lapses and the delivery is tried again
            log.exception("webhook_attempt_failed", delivery_id=delivery.id)
        finally:
            # Its job's next delivery may be due now, and there is room for another attempt.
            self._signal.notify()

    async def _attempt_in_time(self, delivery: DeliveryRow) -> Outcome:
        set_deadline(self._attempt_seconds)  # the calls to auth and assets inherit it
        try:
            async with asyncio.timeout(self._attempt_seconds):
                return await self._attempt(delivery)
        except TimeoutError:
            return failed("the attempt took too long")

    async def _attempt(self, delivery: DeliveryRow) -> Outcome:
        target = webhook_target(delivery.url)
        if target is None or not self._may_use_scheme(target):  # the allow-list changed since
            return refused("plain http goes only to the hosts the operator allows")
        try:
            address = await self._reachable_address(target)
        except OSError:
            return failed("the host name did not resolve")
        if address is None:
            return refused("the host has no address webhooks may reach")
        try:
            secrets = await self._secrets(delivery.account_id)
            body = payload(delivery, await self._job_json(delivery))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # SignUrl's is no result URL
                return refused("the account no longer exists")
            return failed(f"auth or assets answered {error.code().name}")
        except Unavailable:  # the mesh does not know auth's or assets' address yet
            return failed("auth or assets is not started")
        return await self._post(delivery, target, address, secrets, body)

    def _may_use_scheme(self, target: WebhookTarget) -> bool:
        return target.scheme == "https" or self._policy.allow_listed(target.host)

    async def _reachable_address(self, target: WebhookTarget) -> IPAddress | None:
        """The first address of the host that deliveries may connect to."""
        found = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM
        )
        for *_, sockaddr in found:
            address = ip_literal(str(sockaddr[0]))
            if address is not None and self._policy.may_reach(target.host, address):
                return address
        return None

    async def _secrets(self, account_id: str) -> list[str]:
        """The account's signing secret, and the one it replaced while that is still valid."""
        auth = self._mesh.stub("auth", auth_pb2_grpc.AuthServiceStub)
        request = auth_pb2.GetWebhookSecretRequest(account_id=account_id)
        found = await auth.GetWebhookSecret(request)
        return [found.secret, *([found.previous_secret] if found.previous_secret else [])]

    async def _job_json(self, delivery: DeliveryRow) -> dict[str, Any]:
        job = json_format.Parse(delivery.job, jobs_pb2.Job())
        assets = self._mesh.stub("assets", assets_pb2_grpc.AssetsServiceStub)
        urls = public.ContentUrls(assets, self._public_url)
        return public.job(job, await urls.of_result(job, self._result_url_seconds))

    async def _post(
        self,
        delivery: DeliveryRow,
        target: WebhookTarget,
        address: IPAddress,
        secrets: list[str],
        body: bytes,
    ) -> Outcome:
        url = httpx.URL(delivery.url)
        timestamp = int(time.time())
        headers = {
            "host": url.netloc.decode(),
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": webhook_signature(secrets, delivery.id, timestamp, body),
        }
        tracing.inject(headers)
        try:
            async with self._http.stream(
                "POST",
                url.copy_with(host=str(address)),
                content=body,
                headers=headers,
                extensions={"sni_hostname": target.host},
            ) as response:
                return answered(response.status_code, response.headers.get("retry-after"), utcnow())
        except httpx.TimeoutException:
            return failed("the receiver did not answer in time")
        except httpx.HTTPError as error:
            return failed(f"the request failed: {type(error).__name__}")

    async def _record(self, delivery: DeliveryRow, outcome: Outcome) -> None:
        now, state, next_attempt_at = utcnow(), outcome.state, None
        if state == DeliveryState.PENDING:
            schedule = self._settings.webhook_retry_schedule_seconds
            delay = next_delivery_delay(delivery.attempts, schedule, outcome.retry_after)
            if delay is None:
                state = DeliveryState.FAILED
            else:
                next_attempt_at = now + delay
        recorded = await store.record_attempt(
            self._engine,
            delivery,
            state,
            now,
            next_attempt_at=next_attempt_at,
            status=outcome.status,
            error=outcome.error,
        )
        metrics.WEBHOOK_DELIVERIES.labels("jobs", str(state)).inc()
        log.info(
            "webhook_attempt" if recorded else "webhook_attempt_overtaken",
            delivery_id=delivery.id,
            job_id=delivery.job_id,
            event_type=delivery.event_type,
            attempt=delivery.attempts,
            state=state,
            status=outcome.status,
            error=outcome.error,
        )


def _trace_parent(delivery: DeliveryRow) -> str:
    """The traceparent of the request that created the delivery's job."""
    trace_parent: str = json.loads(delivery.job).get("traceParent", "")
    return trace_parent
