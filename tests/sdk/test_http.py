"""Retries, backoff and Retry-After, against a real HTTP server that answers as planned; the
Server-Sent Events decoder; errors of answers that are not the API's."""

import asyncio
import email.utils
import io
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from magicpixels_sdk import (
    APIConnectionError,
    AsyncMagicPixels,
    InvalidRequestError,
    RateLimitError,
    ServerError,
)
from magicpixels_sdk._calls import quote_job, upload_asset
from magicpixels_sdk._http import EventDecoder, retry_delay
from tests.jobs.test_webhooks import Receiver


@pytest.fixture
async def server() -> "Receiver":
    async with Receiver().listening() as listening:
        yield listening


async def test_429_and_503_are_retried_with_one_idempotency_key(server: Receiver) -> None:
    server.plan.extend([(429, {"retry-after": "0"}), (503, {"retry-after": "0"}), (400, {})])
    async with AsyncMagicPixels("mp_test_k.s", base_url=server.url("")) as client:
        with pytest.raises(InvalidRequestError) as refused:
            await client.jobs.create("text_to_image", "x")
    assert refused.value.status == 400
    keys = {request.headers["idempotency-key"] for request in server.requests}
    assert len(server.requests) == 3
    assert len(keys) == 1
    assert keys.pop().startswith("mpsdk_")
    assert server.requests[0].headers["authorization"] == "Bearer mp_test_k.s"


async def test_retries_stop_after_max_retries(server: Receiver) -> None:
    server.plan.extend([(503, {"retry-after": "0"})] * 3 + [(429, {"retry-after": "0"})])
    async with AsyncMagicPixels("k", base_url=server.url(""), max_retries=2) as client:
        with pytest.raises(ServerError) as unavailable:
            await client.jobs.get("job_1")
    assert len(server.requests) == 3
    assert unavailable.value.status == 503
    async with AsyncMagicPixels("k", base_url=server.url(""), max_retries=0) as client:
        with pytest.raises(RateLimitError) as limited:
            await client.jobs.get("job_1")
    assert limited.value.retry_after == 0


async def test_a_quote_is_retried_without_an_idempotency_key(server: Receiver) -> None:
    server.plan.extend([(503, {"retry-after": "0"}), (400, {})])
    async with AsyncMagicPixels("k", base_url=server.url("")) as client:
        with pytest.raises(InvalidRequestError):
            await client.jobs.quote("text_to_audio", "rain", duration_seconds=20)
    assert [request.path for request in server.requests] == ["/v1/jobs/quote"] * 2
    assert all("idempotency-key" not in request.headers for request in server.requests)
    body = {"mode": "text_to_audio", "prompt": "rain", "duration_seconds": 20}
    assert json.loads(server.requests[1].body) == body
    assert quote_job("text_to_image", "x", {}).retry_safe  # a lost connection is retried too


def _job(status: str, queue_position: int | None) -> str:
    job = {"object": "job", "id": "job_1", "mode": "text_to_image", "status": status}
    return json.dumps({**job, "queue_position": queue_position})


@asynccontextmanager
async def _event_stream(body: str) -> AsyncIterator[str]:
    """A server whose every answer is this Server-Sent Events body; yields its URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close"
        writer.write(f"{head}\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stream_types_queue_positions_and_skips_events_it_cannot_read() -> None:
    body = (
        f"event: status\ndata: {_job('queued', 1)}\n\n"
        'event: log\ndata: {"object":"log_line","text":"warming up"}\n\n'
        "event: note\ndata: not json\n\n"
        f"event: queue_position\ndata: {_job('queued', 0)}\n\n"
        f"event: estimate\ndata: {_job('queued', 0)}\n\n"  # a newer event, about the job
        f"event: status\ndata: {_job('completed', None)}\n\n"
    )
    async with _event_stream(body) as url, AsyncMagicPixels("k", base_url=url) as client:
        events = [event async for event in client.jobs.stream("job_1")]
    assert [(event.event, event.queue_position) for event in events] == [
        ("status", 1),
        ("queue_position", 0),
        ("estimate", 0),
        ("status", None),
    ]
    assert events[-1].job.done


class _OneWay(io.BytesIO):
    """A stream that cannot be rewound, as a pipe."""

    def seekable(self) -> bool:
        return False


async def test_an_upload_is_retried_only_when_its_stream_can_be_read_again(
    server: Receiver,
) -> None:
    server.plan.extend([(503, {"retry-after": "0"}), (400, {})])
    stream = io.BytesIO(b"ignored\x89PNG...")
    stream.seek(7)  # from where the caller stands
    async with AsyncMagicPixels("k", base_url=server.url("")) as client:
        with pytest.raises(InvalidRequestError):
            await client.assets.upload(stream, content_type="image/png")
    assert [r.body for r in server.requests] == [b"\x89PNG..."] * 2
    assert server.requests[0].headers["content-length"] == "7"
    # One key for both tries: had the first been stored, the second would answer its asset.
    keys = {request.headers["idempotency-key"] for request in server.requests}
    assert len(keys) == 1
    assert not upload_asset(_OneWay(b"\x89PNG"), "image/png", True).replayable


class _Answer:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_retry_after_is_honoured_in_seconds_or_as_a_date_and_capped() -> None:
    assert retry_delay(0, _Answer({"retry-after": "2"})) == 2  # type: ignore[arg-type]
    assert retry_delay(5, _Answer({"retry-after": "3600"})) == 60  # type: ignore[arg-type]
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 20 < retry_delay(0, _Answer({"retry-after": soon})) <= 30  # type: ignore[arg-type]
    backoffs = [retry_delay(attempt, None) for attempt in range(6)]
    assert all(0.25 <= delay <= 8 for delay in backoffs)
    assert backoffs[5] >= 4  # exponential, up to its cap


def test_the_event_decoder_reads_events_and_skips_keepalives() -> None:
    decoder = EventDecoder()
    lines = [": keep-alive", "", "event: status", 'data: {"a":', "data: 1}", "", "data: x", ""]
    events = [found for line in lines if (found := decoder.feed(line)) is not None]
    assert events == [("status", '{"a":\n1}'), ("message", "x")]


def test_the_sdk_imports_nothing_of_the_server() -> None:
    check = (
        "import sys, magicpixels_sdk; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('magicpixels', 'grpc', 'sqlalchemy', 'fastapi', 'google')))"
    )
    found = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert found.stdout.strip() == "[]", found.stderr


@asynccontextmanager
async def _answering(*answers: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that answers its n-th connection with the n-th of `answers` (raw HTTP, which
    may stop short), the last one again after; yields its URL and the requests' heads."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        heads.append(head)
        writer.write(answers[min(len(heads), len(answers)) - 1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads
    finally:
        server.close()
        await server.wait_closed()


def _http(status: int, body: str, *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} Answer", f"content-length: {len(body)}", "connection: close"]
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n" + body).encode()


async def test_a_create_whose_key_is_still_in_use_is_asked_again_with_that_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create cut off earlier (503, then its retry) may meet its own key still in use: the
    SDK asks again with the same key until the API answers the job, rather than raising an
    error after which a fresh create would make a second job."""
    monkeypatch.setattr("magicpixels_sdk._http._IN_USE_PAUSE", 0.01)
    in_use = json.dumps(
        {
            "error": {
                "type": "conflict_error",
                "code": "idempotency_key_in_use",
                "message": "in progress",
            }
        }
    )
    answers = (_http(503, "", "retry-after: 0"), _http(409, in_use), _http(201, _job("queued", 0)))
    async with _answering(*answers) as (url, heads), AsyncMagicPixels("k", base_url=url) as sdk:
        job = await sdk.jobs.create("text_to_image", "x")
    keys = {
        line
        for head in heads
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"idempotency-key:")
    }
    assert (job.id, len(heads), len(keys)) == ("job_1", 3, 1)


async def test_only_what_cannot_happen_twice_is_retried_and_no_longer_than_a_minute(
    server: Receiver,
) -> None:
    """A cancel answered 503 may have been carried out: it is not sent again. A Retry-After
    past a minute is the caller's to wait for: raised at once."""
    server.plan.extend([(503, {"retry-after": "0"}), (429, {"retry-after": "3600"})])
    async with AsyncMagicPixels("k", base_url=server.url("")) as client:
        with pytest.raises(ServerError):
            await client.jobs.cancel("job_1")
        with pytest.raises(RateLimitError) as limited:
            await client.jobs.get("job_1")
    assert len(server.requests) == 2
    assert limited.value.retry_after == 3600


async def test_an_answer_cut_midway_is_a_connection_error_and_a_stream_reconnects() -> None:
    cut_download = _http(200, "")[:-4].replace(b"content-length: 0", b"content-length: 100")
    cut_download += b"\r\n\r\n" + b"x" * 10
    async with _answering(cut_download) as (url, _), AsyncMagicPixels("k", base_url=url) as sdk:
        with pytest.raises(APIConnectionError, match="cut"):
            await sdk.assets.download("asset_1", io.BytesIO())

    chunked = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked"
    first = f"event: status\ndata: {_job('queued', 0)}\n\n".encode()
    cut_stream = f"{chunked}\r\n\r\n".encode() + b"%x\r\n" % len(first) + first + b"\r\n5\r\nev"
    last = f"event: status\ndata: {_job('completed', None)}\n\n"
    whole = f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{last}"
    async with (
        _answering(cut_stream, whole.encode()) as (url, heads),
        AsyncMagicPixels("k", base_url=url) as sdk,
    ):
        statuses = [event.job.status async for event in sdk.jobs.stream("job_1")]
    assert (statuses, len(heads)) == (["queued", "completed"], 2)


def test_an_in_memory_upload_is_typed_by_its_first_bytes() -> None:
    png = io.BytesIO(b"ignored\x89PNG\r\n\x1a\n....")
    png.seek(7)
    call = upload_asset(png, None, True)
    assert call.headers["Content-Type"] == "image/png"
    assert call.headers["Content-Length"] == "12"  # from where the caller stands
