"""Webhooks: the rules (events, signing, address guard, retry schedule), then deliveries from the
real jobs service, with real auth, billing and assets, to a receiver the test runs, which checks
every signature with the Standard Webhooks algorithm written here on its own."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.bus import LocalBus
from magicpixels.core.errors import InvalidArgument
from magicpixels.core.service import open_database
from magicpixels.core.settings import JobsSettings, MeshSettings
from magicpixels.core.timestamps import as_utc
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.mesh import RunningMesh, start_mesh
from magicpixels.services.jobs import domain, store
from magicpixels.services.jobs.domain import DeliveryState, WebhookPolicy
from magicpixels.services.jobs.server import JobsService
from magicpixels.services.jobs.signals import WEBHOOKS_CHANNEL, announce
from tests.conftest import channel_to, serving
from tests.jobs.conftest import reason_of, text_to_image
from tests.jobs.test_inputs import upload_png
from tests.support import Database, eventually, mesh_databases

PUBLIC_URL = "https://api.magicpixels.test"
# Every attempt after the first follows at once: the tests wait for nothing.
FAST_SCHEDULE = (0.0, 0.0, 0.0)

# The rules


def test_the_signature_is_the_standard_webhooks_test_vector() -> None:
    signature = domain.webhook_signature(
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_during_a_rotation_each_secret_signs() -> None:
    new, old = (
        "whsec_" + base64.b64encode(b"n" * 32).decode(),
        "whsec_" + base64.b64encode(b"o" * 32).decode(),
    )

    signature = domain.webhook_signature([new, old], "msg_1", 1700000000, b"{}")

    first, second = signature.split(" ")
    assert first == domain.webhook_signature([new], "msg_1", 1700000000, b"{}")
    assert second == domain.webhook_signature([old], "msg_1", 1700000000, b"{}")


@pytest.mark.parametrize(
    ("state", "attempts", "was_queued", "event"),
    [
        ("running", 1, True, "job.running"),
        ("running", 2, True, None),  # a retry: the receiver heard of the start already
        ("completed", 1, True, "job.completed"),
        ("failed", 3, True, "job.failed"),
        ("canceled", 0, True, "job.canceled"),
        ("queued", 1, True, None),
        ("failed", 0, False, None),  # billing refused it: the account never saw it
    ],
)
def test_which_moves_make_an_event(
    state: str, attempts: int, was_queued: bool, event: str | None
) -> None:
    assert domain.webhook_event(state, attempts, was_queued) == event


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("64:ff9b:1::a00:1", False),  # local-use NAT64 (RFC 8215), which Python calls global
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1, also global to Python
        ("::a00:1", False),
        ("::ffff:0:a00:1", False),  # IPv4-translated 10.0.0.1
        ("3fff::1", False),  # documentation (RFC 9637)
        ("5f00::1", False),  # outside 2000::/3
    ],
)
def test_only_public_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert domain.is_public(ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/magicpixels?token=abc",
        "https://8.8.8.8:8443/hooks",
        "http://127.0.0.1:9000/hooks",  # allow-listed address
        "http://[::1]/hooks",
        "http://hooks.internal/hooks",  # allow-listed name
        "https://10.20.30.40/hooks",  # allow-listed network
    ],
)
def test_the_policy_accepts_public_https_and_what_the_operator_allows(url: str) -> None:
    policy = WebhookPolicy.allowing(["127.0.0.1", "::1/128", "hooks.internal", "10.20.0.0/16"])

    domain.resolve_spec(text_to_image(webhook_url=url))
    policy.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/magicpixels",  # http to a host not allowed
        "https://127.0.0.2/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:10.0.0.1]/hooks",
        "https://10.21.0.1/hooks",
        "http://8.8.8.8/hooks",
    ],
)
def test_the_policy_refuses_private_literals_and_http_elsewhere(url: str) -> None:
    policy = WebhookPolicy.allowing(["127.0.0.1", "::1/128", "hooks.internal", "10.20.0.0/16"])

    with pytest.raises(InvalidArgument) as caught:
        policy.check(url)

    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "webhook_url")


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hooks", "https://", "https://[::1", "https://example.com:port/", "hooks"],
)
def test_the_webhook_url_rule_refuses_what_is_no_http_url(url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.resolve_spec(text_to_image(webhook_url=url))

    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "webhook_url")


def test_a_host_name_may_reach_private_addresses_only_when_allowed() -> None:
    policy = WebhookPolicy.allowing(["hooks.internal", "192.168.7.0/24"])

    assert policy.may_reach("hooks.internal", ip_address("10.0.0.5"))
    assert policy.may_reach("hooks.example.com", ip_address("192.168.7.9"))
    assert policy.may_reach("hooks.example.com", ip_address("93.184.215.14"))
    assert not policy.may_reach("hooks.example.com", ip_address("10.0.0.5"))
    assert not policy.may_reach("hooks.example.com", ip_address("::ffff:10.0.0.5"))


def test_the_schedule_then_gives_up() -> None:
    schedule = (0, 5, 300, 1800)

    delays = [domain.next_delivery_delay(attempts, schedule, None) for attempts in range(1, 5)]

    assert delays == [timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30), None]


def test_a_retry_after_longer_than_the_schedule_wins() -> None:
    schedule = (0, 5, 300)

    assert domain.next_delivery_delay(1, schedule, timedelta(seconds=60)) == timedelta(seconds=60)
    assert domain.next_delivery_delay(1, schedule, timedelta(seconds=1)) == timedelta(seconds=5)
    assert domain.next_delivery_delay(3, schedule, timedelta(seconds=60)) is None


def test_the_default_schedule_retries_for_more_than_a_day() -> None:
    schedule = JobsSettings().webhook_retry_schedule_seconds

    assert schedule[:5] == (0, 5, 300, 1800, 7200)
    assert timedelta(seconds=sum(schedule)) > timedelta(days=1)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (" 0 ", timedelta(0)),
        ("Wed, 21 Oct 2026 07:28:30 GMT", timedelta(seconds=30)),
        ("Wed, 21 Oct 2026 07:27:00 GMT", timedelta(0)),  # in the past
        ("99999999999999999999", domain.MAX_RETRY_AFTER),
        ("Thu, 21 Oct 2027 07:28:00 GMT", domain.MAX_RETRY_AFTER),
        ("-5", None),
        ("soon", None),
        ("١٢", None),  # digits, but not ASCII ones
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(header: str | None, expected: Any) -> None:
    now = datetime(2026, 10, 21, 7, 28, tzinfo=UTC)

    assert domain.parse_retry_after(header, now) == expected


@pytest.mark.parametrize(
    "hosts", [["127.0.0.1/33"], ["hooks internal"], ["1.2.3"], ["https://hooks.example.com"]]
)
def test_an_allow_list_entry_must_be_a_host_or_a_network(hosts: list[str]) -> None:
    with pytest.raises(ValidationError):
        JobsSettings(webhook_allowed_hosts=hosts)


def test_the_schedule_must_not_be_empty_or_negative() -> None:
    for schedule in [(), (0, -5)]:
        with pytest.raises(ValidationError):
            JobsSettings(webhook_retry_schedule_seconds=schedule)


async def test_only_a_move_that_made_an_event_wakes_the_dispatchers() -> None:
    bus = LocalBus()
    spec = '{"mode": "JOB_MODE_TEXT_TO_IMAGE", "webhookUrl": "https://example.com/h"}'
    started = SimpleNamespace(
        id="job_1", state="running", mode="text_to_image", attempts=1, queued_at=1, spec=spec
    )
    retried = SimpleNamespace(**{**vars(started), "id": "job_2", "attempts": 2})
    no_webhook = SimpleNamespace(**{**vars(started), "id": "job_3", "spec": "{}"})
    async with bus.subscribe(WEBHOOKS_CHANNEL) as hints:
        await announce(bus, retried, no_webhook, started)  # type: ignore[arg-type]

        assert await anext(hints) == b"job_1"


# Deliveries


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


# A planned answer that never comes.
HANG = (0, {})


@dataclass
class Receiver:
    """A webhook receiver on a free port of this machine. It records every request and answers
    each with the next planned answer (status, headers), 200 once the plan runs out."""

    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    plan: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    port: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hooks", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @asynccontextmanager
    async def listening(self) -> AsyncIterator["Receiver"]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self.closing.set()
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(_header(line) for line in head[1:] if line)
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Request(head[0].split(" ")[1], headers, body))
            status, extra = self.plan.popleft() if self.plan else (200, {})
            if (status, extra) == HANG:
                await self.closing.wait()
                return
            lines = [f"HTTP/1.1 {status} Answer", "content-length: 0", "connection: close"]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
        finally:
            writer.close()

    def events(self, secret: str) -> list[dict[str, Any]]:
        """Every request's event, each checked as a receiver checks it."""
        return [verified(secret, request) for request in self.requests]


def _header(line: str) -> tuple[str, str]:
    name, value = line.split(":", 1)
    return name.strip().lower(), value.strip()


def verified(secret: str, request: Request) -> dict[str, Any]:
    """The event a request carries, after checking it as Standard Webhooks says a receiver does:
    an HMAC-SHA256 under the base64 key after `whsec_`, of "id.timestamp.body", among the
    space-separated `v1,` signatures, with a timestamp within five minutes."""
    message_id, timestamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{message_id}.{timestamp}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    signatures = [
        entry.split(",", 1)[1]
        for entry in request.headers["webhook-signature"].split(" ")
        if entry.startswith("v1,")
    ]
    assert any(hmac.compare_digest(expected, signature) for signature in signatures)
    assert abs(time.time() - int(timestamp)) < 300
    assert request.headers["content-type"] == "application/json"
    event: dict[str, Any] = json.loads(request.body)
    return {"id": message_id, **event}


@dataclass
class World:
    """Auth, billing and assets in this process, and the jobs service, which a test may stop and
    start again on the same database; an account with credits and its webhook secret."""

    running: RunningMesh
    settings: JobsSettings
    jobs_stack: AsyncExitStack
    engine: AsyncEngine
    account_id: str = ""
    secret: str = ""
    jobs: jobs_pb2_grpc.JobsServiceStub | None = None

    async def start_jobs(self) -> None:
        stack = AsyncExitStack()
        server = await stack.enter_async_context(
            serving(JobsService(self.running.mesh, self.settings), self.running.mesh)
        )
        channel = channel_to(server, self.running.mesh)
        stack.push_async_callback(channel.close)
        self.jobs = jobs_pb2_grpc.JobsServiceStub(channel)
        self.jobs_stack = stack

    async def stop_jobs(self) -> None:
        await self.jobs_stack.aclose()

    @property
    def stub(self) -> jobs_pb2_grpc.JobsServiceStub:
        assert self.jobs is not None
        return self.jobs

    async def create(self, webhook_url: str, **fields: Any) -> jobs_pb2.Job:
        spec = text_to_image(webhook_url=webhook_url, **fields)
        request = jobs_pb2.CreateJobRequest(account_id=self.account_id, livemode=True, spec=spec)
        return await self.stub.CreateJob(request)

    async def lease(self) -> jobs_pb2.Lease:
        request = jobs_pb2.LeaseJobRequest(
            worker_id="worker-1", modes=[jobs_pb2.JOB_MODE_TEXT_TO_IMAGE], wait=Duration()
        )
        response = await self.stub.LeaseJob(request)
        assert response.HasField("lease")
        return response.lease

    async def complete(self, lease: jobs_pb2.Lease) -> str:
        """Completes the leased job with a real result asset; its id."""
        asset_id = await upload_png(self.running, (64, 48), account_id=self.account_id)
        result = jobs_pb2.JobResult(
            asset_id=asset_id, content_type="image/png", width=64, height=48
        )
        await self.stub.CompleteJob(
            jobs_pb2.CompleteJobRequest(job_id=lease.job.id, lease_token=lease.token, result=result)
        )
        return asset_id

    async def fail(self, lease: jobs_pb2.Lease, *, retryable: bool) -> None:
        error = jobs_pb2.JobError(code="backend_error", message="the backend crashed")
        await self.stub.FailJob(
            jobs_pb2.FailJobRequest(
                job_id=lease.job.id, lease_token=lease.token, error=error, retryable=retryable
            )
        )

    async def cancel(self, job_id: str) -> None:
        request = jobs_pb2.CancelJobRequest(id=job_id, account_id=self.account_id)
        await self.stub.CancelJob(request)

    async def deliveries(self, job_id: str) -> list[store.DeliveryRow]:
        return await store.deliveries_of(self.engine, job_id)

    async def settled(self, job_id: str, count: int) -> list[store.DeliveryRow]:
        """The job's deliveries once there are `count` and none is pending any more."""
        found: list[store.DeliveryRow] = []

        async def all_ended() -> bool:
            nonlocal found
            found = await self.deliveries(job_id)
            return len(found) == count and DeliveryState.PENDING not in {d.state for d in found}

        await eventually(all_ended)
        return found


@asynccontextmanager
async def world(database: Database, tmp_path: Path, **jobs_settings: Any) -> AsyncIterator[World]:
    """The world of a test; its jobs settings allow 127.0.0.1 and retry at once by default."""
    data_dir = tmp_path / "mesh"
    databases = mesh_databases(database, data_dir)
    running = await start_mesh(
        MeshSettings(data_dir=data_dir, grace_seconds=0.2),
        None,
        only=("auth", "billing", "assets"),
        service_settings=databases,
    )
    defaults = {
        "webhook_allowed_hosts": ("127.0.0.1",),
        "webhook_retry_schedule_seconds": FAST_SCHEDULE,
        "webhook_timeout_seconds": 5.0,
        "public_url": PUBLIC_URL,
    }
    settings = databases["jobs"].model_copy(update=defaults | jobs_settings)
    assert isinstance(settings, JobsSettings)
    engine = await open_database(
        running.mesh.settings, settings, "jobs", "magicpixels.services.jobs.migrations"
    )
    found = World(running, settings, AsyncExitStack(), engine)
    try:
        await found.start_jobs()
        await _sign_up(found)
        yield found
    finally:
        await found.stop_jobs()
        await engine.dispose()
        await running.stop()


async def _sign_up(found: World) -> None:
    auth = auth_pb2_grpc.AuthServiceStub(found.running.mesh.channel("auth"))
    created = await auth.CreateAccount(auth_pb2.CreateAccountRequest(email="ada@example.com"))
    found.account_id, found.secret = created.account.id, created.webhook_secret
    billing = billing_pb2_grpc.BillingServiceStub(found.running.mesh.channel("billing"))
    await billing.Grant(billing_pb2.GrantRequest(account_id=found.account_id, amount=100))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().listening() as listening:
        yield listening


async def received(receiver: Receiver, count: int) -> None:
    async def arrived() -> bool:
        return len(receiver.requests) >= count

    await eventually(arrived)


async def test_the_receiver_verifies_each_event_in_order_with_the_job_as_it_was(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with world(database, tmp_path) as w:
        job = await w.create(receiver.url("/hooks/42?source=test"), metadata={"order": "42"})
        lease = await w.lease()
        asset_id = await w.complete(lease)
        await received(receiver, 2)
        deliveries = await w.settled(job.id, 2)
        assets = assets_pb2_grpc.AssetsServiceStub(w.running.mesh.channel("assets"))

        running, completed = receiver.events(w.secret)
        assert [running["type"], completed["type"]] == ["job.running", "job.completed"]
        assert running["id"] != completed["id"]
        assert [d.id for d in deliveries] == [running["id"], completed["id"]]
        assert [(d.state, d.attempts, d.last_status) for d in deliveries] == [
            (DeliveryState.DELIVERED, 1, 200)
        ] * 2
        # Each carries the job as its move left it, as the API renders it.
        assert running["data"]["id"] == completed["data"]["id"] == job.id
        assert (running["data"]["status"], running["data"]["result"]) == ("running", None)
        assert running["data"]["completed_at"] is None
        assert completed["data"]["status"] == "completed"
        assert completed["data"]["metadata"] == {"order": "42"}
        assert completed["timestamp"] == completed["data"]["completed_at"]
        result = completed["data"]["result"]
        assert (result["asset_id"], result["width"], result["height"]) == (asset_id, 64, 48)
        # The result URL is signed for the gateway's public origin, and assets accepts it.
        url = urlsplit(result["url"])
        assert f"{url.scheme}://{url.netloc}" == PUBLIC_URL
        assert url.path == f"/v1/assets/{asset_id}/content"
        verified_asset = await assets.VerifyUrl(
            assets_pb2.VerifyUrlRequest(id=asset_id, query=url.query)
        )
        assert verified_asset.id == asset_id
        request = receiver.requests[0]
        assert request.path == "/hooks/42?source=test"
        assert request.headers["host"] == f"127.0.0.1:{receiver.port}"


async def test_a_500_is_retried_with_the_same_id_and_the_next_event_waits_for_it(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.plan.extend([(500, {}), (500, {})])
    async with world(database, tmp_path, webhook_retry_schedule_seconds=(0, 0, 0, 0)) as w:
        job = await w.create(receiver.url())
        await w.complete(await w.lease())
        await received(receiver, 4)
        deliveries = await w.settled(job.id, 2)

        events = receiver.events(w.secret)
        assert [event["type"] for event in events] == ["job.running"] * 3 + ["job.completed"]
        assert len({event["id"] for event in events[:3]}) == 1
        assert events[0] == events[2]  # the same event, signed anew for each attempt
        assert [(d.event_type, d.state, d.attempts) for d in deliveries] == [
            ("job.running", DeliveryState.DELIVERED, 3),
            ("job.completed", DeliveryState.DELIVERED, 1),
        ]


async def test_a_delivery_failing_every_attempt_is_given_up_and_the_next_one_follows(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.plan.extend([(503, {})] * 3)
    async with world(database, tmp_path) as w:
        job = await w.create(receiver.url())
        await w.complete(await w.lease())
        deliveries = await w.settled(job.id, 2)

        assert [(d.state, d.attempts, d.last_status) for d in deliveries] == [
            (DeliveryState.FAILED, len(FAST_SCHEDULE), 503),
            (DeliveryState.DELIVERED, 1, 200),
        ]
        events = receiver.events(w.secret)
        assert [event["type"] for event in events] == ["job.running"] * 3 + ["job.completed"]


async def test_retry_after_holds_the_next_attempt_back(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.plan.append((429, {"retry-after": "3600"}))
    async with world(database, tmp_path) as w:
        job = await w.create(receiver.url())
        await w.lease()

        async def attempted() -> bool:
            return (await w.deliveries(job.id))[0].last_status == 429

        await eventually(attempted)
        [delivery] = await w.deliveries(job.id)

        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 1)
        held_back = as_utc(delivery.next_attempt_at) - as_utc(delivery.updated_at)
        assert held_back == timedelta(hours=1)
        assert len(receiver.requests) == 1


async def test_ended_jobs_say_how_they_ended_and_a_retried_job_starts_once(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with world(database, tmp_path) as w:
        canceled_queued = await w.create(receiver.url("/queued"))
        await w.cancel(canceled_queued.id)
        canceled_running = await w.create(receiver.url("/running"))
        await w.lease()
        await w.cancel(canceled_running.id)
        failed = await w.create(receiver.url("/failed"))
        await w.fail(await w.lease(), retryable=False)
        retried = await w.create(receiver.url("/retried"))
        await w.fail(await w.lease(), retryable=True)

        async def leased_again() -> jobs_pb2.Lease:
            while True:  # its retry waits out a backoff of a second
                request = jobs_pb2.LeaseJobRequest(
                    worker_id="worker-2", modes=[jobs_pb2.JOB_MODE_TEXT_TO_IMAGE]
                )
                request.wait.FromTimedelta(timedelta(seconds=5))
                response = await w.stub.LeaseJob(request)
                if response.HasField("lease"):
                    return response.lease

        await w.complete(await leased_again())
        await received(receiver, 7)

        by_path: dict[str, list[str]] = {}
        for request, event in zip(receiver.requests, receiver.events(w.secret), strict=True):
            assert event["data"]["status"] == event["type"].removeprefix("job.")
            by_path.setdefault(request.path, []).append(event["type"])
        assert by_path == {
            "/queued": ["job.canceled"],
            "/running": ["job.running", "job.canceled"],
            "/failed": ["job.running", "job.failed"],
            "/retried": ["job.running", "job.completed"],
        }
        for job in (canceled_queued, canceled_running, failed, retried):
            await w.settled(job.id, len(by_path[urlsplit(job.spec.webhook_url).path]))


async def test_deliveries_outlive_a_stop_of_the_jobs_service(
    database: Database, tmp_path: Path
) -> None:
    receiver = Receiver()
    async with receiver.listening():
        pass  # its port, on which nothing listens for now
    # Retried every 50 ms for minutes: until the receiver listens again.
    schedule = (0.0,) + (0.05,) * 10_000
    async with world(database, tmp_path, webhook_retry_schedule_seconds=schedule) as w:
        job = await w.create(receiver.url())
        await w.complete(await w.lease())

        async def refused_twice() -> bool:
            return (await w.deliveries(job.id))[0].attempts >= 2

        await eventually(refused_twice)
        await w.stop_jobs()
        async with receiver.listening():
            await w.start_jobs()
            await received(receiver, 2)
            deliveries = await w.settled(job.id, 2)

        assert [event["type"] for event in receiver.events(w.secret)] == [
            "job.running",
            "job.completed",
        ]
        assert [d.state for d in deliveries] == [DeliveryState.DELIVERED] * 2
        assert deliveries[0].attempts > 2


async def test_a_receiver_that_does_not_answer_in_time_gets_the_delivery_again(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.plan.append(HANG)
    async with world(database, tmp_path, webhook_timeout_seconds=0.5) as w:
        job = await w.create(receiver.url())
        await w.lease()
        [delivery] = await w.settled(job.id, 1)

        first, again = receiver.events(w.secret)
        assert first == again
        assert (delivery.state, delivery.attempts, delivery.last_status) == (
            DeliveryState.DELIVERED,
            2,
            200,
        )


async def test_an_attempt_cut_short_by_a_stop_is_made_again_at_once_after_it(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.plan.append(HANG)
    # Its claim would hold the delivery for over a minute, were it not freed.
    async with world(database, tmp_path, webhook_timeout_seconds=60.0) as w:
        job = await w.create(receiver.url())
        await w.lease()
        await received(receiver, 1)
        await w.stop_jobs()
        await w.start_jobs()
        await received(receiver, 2)
        [delivery] = await w.settled(job.id, 1)

        first, again = receiver.events(w.secret)
        assert first == again
        assert (delivery.state, delivery.attempts) == (DeliveryState.DELIVERED, 2)


async def test_a_private_address_is_never_contacted_without_the_allow_list(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with world(database, tmp_path, webhook_allowed_hosts=()) as w:
        for url in (receiver.url(), receiver.url().replace("http:", "https:")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await w.create(url)
            assert reason_of(caught.value) == "PARAMETER_INVALID"
        # A name is resolved when delivering: this one resolves to loopback only.
        job = await w.create(receiver.url(host="localhost").replace("http:", "https:"))
        await w.lease()
        [delivery] = await w.settled(job.id, 1)

        assert (delivery.state, delivery.attempts) == (DeliveryState.REFUSED, 1)
        assert delivery.last_error == "the host has no address webhooks may reach"
        assert receiver.connections == 0


async def test_a_rotated_secret_still_verifies_during_its_grace_period(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with world(database, tmp_path) as w:
        auth = auth_pb2_grpc.AuthServiceStub(w.running.mesh.channel("auth"))
        rotated = await auth.RotateWebhookSecret(
            auth_pb2.RotateWebhookSecretRequest(account_id=w.account_id)
        )
        await w.create(receiver.url())
        await w.lease()
        await received(receiver, 1)

        assert rotated.previous_secret == w.secret
        [request] = receiver.requests
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert verified(rotated.secret, request) == verified(w.secret, request)


async def test_two_dispatchers_deliver_each_event_once_in_order(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with world(database, tmp_path) as w:
        # A second jobs service on the same database: another process of a cluster.
        second = JobsService(w.running.mesh, w.settings)
        async with serving(second, w.running.mesh):
            jobs = [await w.create(receiver.url(f"/{n}")) for n in range(8)]
            for _ in jobs:
                await w.complete(await w.lease())
            await received(receiver, 16)
            for job in jobs:
                await w.settled(job.id, 2)

        events = receiver.events(w.secret)
        assert len({event["id"] for event in events}) == len(events) == 16
        by_path: dict[str, list[str]] = {}
        for request, event in zip(receiver.requests, events, strict=True):
            by_path.setdefault(request.path, []).append(event["type"])
        assert by_path == {f"/{n}": ["job.running", "job.completed"] for n in range(8)}


async def test_a_job_past_its_deadline_sends_job_canceled_saying_so(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with world(database, tmp_path) as w:
        job = await w.create(receiver.url(), deadline_seconds=1)
        await received(receiver, 1)
        [delivery] = await w.settled(job.id, 1)

    [event] = receiver.events(w.secret)
    assert (event["type"], event["data"]["id"]) == ("job.canceled", job.id)
    assert event["data"]["error"]["code"] == "deadline_exceeded"
    assert delivery.state == DeliveryState.DELIVERED
