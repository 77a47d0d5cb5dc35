"""The clients: `MagicPixels` (sync) and `AsyncMagicPixels`, with `jobs`, `assets`, `account`."""

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import httpx

from magicpixels_sdk import _calls
from magicpixels_sdk._calls import Upload
from magicpixels_sdk._http import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    AsyncTransport,
    Call,
    Settings,
    SyncTransport,
)
from magicpixels_sdk.errors import JobFailedError, WaitTimeoutError
from magicpixels_sdk.models import (
    Account,
    ApiKey,
    Asset,
    Job,
    JobEvent,
    LedgerEntry,
    Plan,
    Price,
    Quote,
    SignedUrl,
    SignUp,
    Subscription,
)

Destination = str | Path | IO[bytes]
T = TypeVar("T")


def _job_id(job: "str | Job") -> str:
    return job if isinstance(job, str) else job.id


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _ends(event: JobEvent) -> bool:
    return event.event == "status" and event.job.done


def _finished(job: Job, raise_on_failure: bool) -> Job:
    if raise_on_failure and job.status in ("failed", "canceled"):
        raise JobFailedError(job)
    return job


class Jobs:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def create(
        self,
        mode: str,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **params: Any,
    ) -> Job:
        """Creates a job of `mode`; any other field of the API's job body goes in `params`
        (input_asset_id, width, duration_seconds, deadline_seconds, ...). `wait` (0..60 s)
        answers when the job ended, if it does within that time."""
        return Job.parse(
            self._t.json(_calls.create_job(mode, prompt, params, idempotency_key, wait))
        )

    def quote(self, mode: str, prompt: str | None = None, **params: Any) -> Quote:
        """What `create` with these arguments would cost, and whether the balance covers it;
        checked as a create is (the same errors), but creates, holds and charges nothing."""
        return Quote.parse(self._t.json(_calls.quote_job(mode, prompt, params)))

    def get(self, job: "str | Job", *, wait: int | None = None) -> Job:
        """The job; with `wait` (1..60 s), as soon as its status changes."""
        return Job.parse(self._t.json(_calls.get_job(_job_id(job), wait)))

    def list(
        self, *, status: str | None = None, mode: str | None = None, page_size: int = 20
    ) -> Iterator[Job]:
        """Every job of the key, newest first, fetched a page at a time as it is iterated."""
        return _pages(self._t, "/v1/jobs", page_size, Job.parse, status=status, mode=mode)

    def cancel(self, job: "str | Job") -> Job:
        return Job.parse(self._t.json(_calls.cancel_job(_job_id(job))))

    def wait(
        self, job: "str | Job", timeout: float | None = None, *, raise_on_failure: bool = False
    ) -> Job:
        """The job once it ended, long-polling (no busy loop); WaitTimeoutError after
        `timeout` seconds. `raise_on_failure`: a failed or canceled job raises JobFailedError
        (its `code` is `deadline_exceeded` when the job's deadline canceled it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        found = job if isinstance(job, Job) else self.get(job)
        while not found.done:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(found, timeout or 0)
            found = self.get(found.id, wait=_calls.poll_seconds(remaining))
        return _finished(found, raise_on_failure)

    def stream(self, job: "str | Job") -> Iterator[JobEvent]:
        """The job's events as they happen (`status`, `progress`, `queue_position`), until it
        ends (reconnecting if a stream is cut); an event whose data is no job is skipped."""
        job_id = _job_id(job)
        while True:
            for name, data in self._t.events(_calls.job_events(job_id)):
                event = JobEvent.parse(name, data)
                if event is None:
                    continue
                yield event
                if _ends(event):
                    return

    def run(
        self, mode: str, prompt: str | None = None, *, timeout: float | None = None, **params: Any
    ) -> Job:
        """Creates the job and waits for it to end; a failed one raises JobFailedError."""
        created = self.create(mode, prompt, **params)
        return self.wait(created, timeout, raise_on_failure=True)


class Assets:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def upload(self, file: Upload, *, content_type: str | None = None) -> Asset:
        """Uploads a path, bytes or a binary file, streamed."""
        return Asset.parse(self._t.json(_calls.upload_asset(file, content_type, False)))

    def get(self, asset_id: str) -> Asset:
        return Asset.parse(self._t.json(Call("GET", f"/v1/assets/{asset_id}")))

    def list(self, *, page_size: int = 20) -> Iterator[Asset]:
        return _pages(self._t, "/v1/assets", page_size, Asset.parse)

    def delete(self, asset_id: str) -> None:
        self._t.json(Call("DELETE", f"/v1/assets/{asset_id}"))

    def url(self, asset_id: str, expires_in: int = 3600) -> SignedUrl:
        call = Call("POST", f"/v1/assets/{asset_id}/url", json={"expires_in": expires_in})
        return SignedUrl.parse(self._t.json(call))

    def download(self, asset_id: str, destination: Destination) -> int:
        """Streams the asset's content to a path or a binary file; answers its size."""
        with self._t.stream(Call("GET", f"/v1/assets/{asset_id}/content")) as response:
            if isinstance(destination, str | Path):
                with Path(destination).open("wb") as f:
                    return _copy(response.iter_bytes(), f)
            return _copy(response.iter_bytes(), destination)

    def content(self, asset_id: str) -> bytes:
        with self._t.stream(Call("GET", f"/v1/assets/{asset_id}/content")) as response:
            return response.read()


def _copy(chunks: Iterator[bytes], f: IO[bytes]) -> int:
    size = 0
    for chunk in chunks:
        f.write(chunk)
        size += len(chunk)
    return size


class AccountResource:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def get(self) -> Account:
        return Account.parse(self._t.json(Call("GET", "/v1/account")))

    def ledger(self, *, page_size: int = 20) -> Iterator[LedgerEntry]:
        """Every change of the account's credits, newest first (of the key's mode)."""
        return _pages(self._t, "/v1/credits/ledger", page_size, LedgerEntry.parse)

    def pricing(self) -> list[Price]:
        """What each mode costs (the API's price table)."""
        return list(_pages(self._t, "/v1/pricing", 100, Price.parse))

    def create(
        self, email: str, *, name: str | None = None, idempotency_key: str | None = None
    ) -> SignUp:
        """Signs up (no key needed): the account, its first key's token, its webhook secret."""
        return SignUp.parse(self._t.json(_calls.create_account(email, name, idempotency_key)))

    def plans(self) -> list[Plan]:
        return list(_pages(self._t, "/v1/plans", 100, Plan.parse))

    def subscription(self) -> Subscription:
        """The account's subscription (NotFoundError when it never subscribed)."""
        return Subscription.parse(self._t.json(Call("GET", "/v1/subscription")))

    def subscribe(self, plan: str) -> Subscription:
        """Subscribes to `plan`, or changes to it; a paid plan is `pending` until approved."""
        call = Call("POST", "/v1/subscription", json={"plan": plan})
        return Subscription.parse(self._t.json(call))

    def cancel_subscription(self) -> Subscription:
        """Cancels at the end of the running period."""
        return Subscription.parse(self._t.json(Call("POST", "/v1/subscription/cancel")))

    def rotate_webhook_secret(self, grace_period_seconds: int | None = None) -> str:
        """A new signing secret; the old one verifies for the grace period (default 24 h)."""
        rotated = self._t.json(_calls.rotate_webhook_secret(grace_period_seconds))
        return str(rotated["secret"])


class ApiKeys:
    """The account's API keys: make one (its token is in that answer only), list, revoke."""

    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def create(
        self,
        name: str,
        *,
        mode: str = "live",
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> ApiKey:
        """A new key (scopes: those of the calling key when None); an idempotency key is
        generated when none is given, so a retried create never makes two keys."""
        call = _calls.create_api_key(name, mode, scopes, expires_at, idempotency_key)
        return ApiKey.parse(self._t.json(call))

    def list(self, *, page_size: int = 20) -> Iterator[ApiKey]:
        return _pages(self._t, "/v1/api_keys", page_size, ApiKey.parse)

    def revoke(self, key_id: str) -> ApiKey:
        return ApiKey.parse(self._t.json(Call("DELETE", f"/v1/api_keys/{key_id}")))


def _pages(
    transport: SyncTransport,
    path: str,
    page_size: int,
    parse: Callable[[dict[str, Any]], T],
    **filters: Any,
) -> Iterator[T]:
    """A list route's items, a page at a time as they are iterated."""
    after = None
    while True:
        page = transport.json(_calls.list_page(path, page_size, after, **filters))
        yield from (parse(item) for item in page["data"])
        if not page["has_more"]:
            return
        after = page["next_cursor"]


class MagicPixels:
    """The API, synchronously. Without arguments: MAGICPIXELS_API_KEY and MAGICPIXELS_BASE_URL
    (default http://localhost:8080). A 429 is retried `max_retries` times after its
    Retry-After (one of over a minute is raised at once) or an exponential backoff; so is a
    503 of a call that cannot do anything twice (a read, or one with an idempotency key), and
    a create whose key an earlier try of it still holds. An `http_client` of the caller's is
    used as it is (clients of several keys may share one) and left open."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        settings = Settings.resolve(api_key, base_url, timeout, max_retries)
        self._transport = SyncTransport(settings, http_client)
        self.jobs = Jobs(self._transport)
        self.assets = Assets(self._transport)
        self.api_keys = ApiKeys(self._transport)
        self.account = AccountResource(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.settings.base_url

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "MagicPixels":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncJobs:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        mode: str,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **params: Any,
    ) -> Job:
        """As `Jobs.create`."""
        call = _calls.create_job(mode, prompt, params, idempotency_key, wait)
        return Job.parse(await self._t.json(call))

    async def quote(self, mode: str, prompt: str | None = None, **params: Any) -> Quote:
        """As `Jobs.quote`."""
        return Quote.parse(await self._t.json(_calls.quote_job(mode, prompt, params)))

    async def get(self, job: "str | Job", *, wait: int | None = None) -> Job:
        return Job.parse(await self._t.json(_calls.get_job(_job_id(job), wait)))

    def list(
        self, *, status: str | None = None, mode: str | None = None, page_size: int = 20
    ) -> AsyncIterator[Job]:
        return _pages_async(self._t, "/v1/jobs", page_size, Job.parse, status=status, mode=mode)

    async def cancel(self, job: "str | Job") -> Job:
        return Job.parse(await self._t.json(_calls.cancel_job(_job_id(job))))

    async def wait(
        self,
        job: "str | Job",
        timeout: float | None = None,  # noqa: ASYNC109 (as the sync client's, long polls)
        *,
        raise_on_failure: bool = False,
    ) -> Job:
        """As `Jobs.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        found = job if isinstance(job, Job) else await self.get(job)
        while not found.done:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(found, timeout or 0)
            found = await self.get(found.id, wait=_calls.poll_seconds(remaining))
        return _finished(found, raise_on_failure)

    async def stream(self, job: "str | Job") -> AsyncIterator[JobEvent]:
        """As `Jobs.stream`."""
        job_id = _job_id(job)
        while True:
            async for name, data in self._t.events(_calls.job_events(job_id)):
                event = JobEvent.parse(name, data)
                if event is None:
                    continue
                yield event
                if _ends(event):
                    return

    async def run(
        self,
        mode: str,
        prompt: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (as the sync client's)
        **params: Any,
    ) -> Job:
        created = await self.create(mode, prompt, **params)
        return await self.wait(created, timeout, raise_on_failure=True)


class AsyncAssets:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def upload(self, file: Upload, *, content_type: str | None = None) -> Asset:
        return Asset.parse(await self._t.json(_calls.upload_asset(file, content_type, True)))

    async def get(self, asset_id: str) -> Asset:
        return Asset.parse(await self._t.json(Call("GET", f"/v1/assets/{asset_id}")))

    def list(self, *, page_size: int = 20) -> AsyncIterator[Asset]:
        return _pages_async(self._t, "/v1/assets", page_size, Asset.parse)

    async def delete(self, asset_id: str) -> None:
        await self._t.json(Call("DELETE", f"/v1/assets/{asset_id}"))

    async def url(self, asset_id: str, expires_in: int = 3600) -> SignedUrl:
        call = Call("POST", f"/v1/assets/{asset_id}/url", json={"expires_in": expires_in})
        return SignedUrl.parse(await self._t.json(call))

    async def download(self, asset_id: str, destination: Destination) -> int:
        async with self._t.stream(Call("GET", f"/v1/assets/{asset_id}/content")) as response:
            if isinstance(destination, str | Path):
                async with await anyio.open_file(destination, "wb") as f:
                    return await _copy_async(response.aiter_bytes(), f.write)
            write = destination.write
            return await _copy_async(
                response.aiter_bytes(), lambda chunk: anyio.to_thread.run_sync(write, chunk)
            )

    async def content(self, asset_id: str) -> bytes:
        async with self._t.stream(Call("GET", f"/v1/assets/{asset_id}/content")) as response:
            return await response.aread()


async def _copy_async(
    chunks: AsyncIterator[bytes], write: Callable[[bytes], Awaitable[int]]
) -> int:
    size = 0
    async for chunk in chunks:
        await write(chunk)
        size += len(chunk)
    return size


class AsyncAccountResource:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def get(self) -> Account:
        return Account.parse(await self._t.json(Call("GET", "/v1/account")))

    def ledger(self, *, page_size: int = 20) -> AsyncIterator[LedgerEntry]:
        return _pages_async(self._t, "/v1/credits/ledger", page_size, LedgerEntry.parse)

    async def pricing(self) -> list[Price]:
        return [price async for price in _pages_async(self._t, "/v1/pricing", 100, Price.parse)]

    async def create(
        self, email: str, *, name: str | None = None, idempotency_key: str | None = None
    ) -> SignUp:
        call = _calls.create_account(email, name, idempotency_key)
        return SignUp.parse(await self._t.json(call))

    async def plans(self) -> list[Plan]:
        return [plan async for plan in _pages_async(self._t, "/v1/plans", 100, Plan.parse)]

    async def subscription(self) -> Subscription:
        return Subscription.parse(await self._t.json(Call("GET", "/v1/subscription")))

    async def subscribe(self, plan: str) -> Subscription:
        call = Call("POST", "/v1/subscription", json={"plan": plan})
        return Subscription.parse(await self._t.json(call))

    async def cancel_subscription(self) -> Subscription:
        return Subscription.parse(await self._t.json(Call("POST", "/v1/subscription/cancel")))

    async def rotate_webhook_secret(self, grace_period_seconds: int | None = None) -> str:
        rotated = await self._t.json(_calls.rotate_webhook_secret(grace_period_seconds))
        return str(rotated["secret"])


class AsyncApiKeys:
    """As `ApiKeys`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        name: str,
        *,
        mode: str = "live",
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> ApiKey:
        call = _calls.create_api_key(name, mode, scopes, expires_at, idempotency_key)
        return ApiKey.parse(await self._t.json(call))

    def list(self, *, page_size: int = 20) -> AsyncIterator[ApiKey]:
        return _pages_async(self._t, "/v1/api_keys", page_size, ApiKey.parse)

    async def revoke(self, key_id: str) -> ApiKey:
        return ApiKey.parse(await self._t.json(Call("DELETE", f"/v1/api_keys/{key_id}")))


async def _pages_async(
    transport: AsyncTransport,
    path: str,
    page_size: int,
    parse: Callable[[dict[str, Any]], T],
    **filters: Any,
) -> AsyncIterator[T]:
    """As `_pages`."""
    after = None
    while True:
        page = await transport.json(_calls.list_page(path, page_size, after, **filters))
        for item in page["data"]:
            yield parse(item)
        if not page["has_more"]:
            return
        after = page["next_cursor"]


class AsyncMagicPixels:
    """The API, with asyncio (or trio): as `MagicPixels`, every call awaited."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        settings = Settings.resolve(api_key, base_url, timeout, max_retries)
        self._transport = AsyncTransport(settings, http_client)
        self.jobs = AsyncJobs(self._transport)
        self.assets = AsyncAssets(self._transport)
        self.api_keys = AsyncApiKeys(self._transport)
        self.account = AsyncAccountResource(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.settings.base_url

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> "AsyncMagicPixels":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
