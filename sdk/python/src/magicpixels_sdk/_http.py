"""Sending calls to the API: authentication, retries with backoff, errors as exceptions,
Server-Sent Events. One sync and one async transport over the same call descriptions."""

import contextlib
import email.utils
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from magicpixels_sdk import __version__
from magicpixels_sdk.errors import APIConnectionError, error_from_response

DEFAULT_BASE_URL = "http://localhost:8080"
# Seconds one request may take; a long poll adds the seconds it asked to wait.
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
# Answers worth another try after a pause: rate limited, a service briefly unavailable.
RETRY_STATUSES = frozenset({429, 503})
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0
# The longest a Retry-After is waited for; a longer one is the caller's decision, so the error
# is raised at once.
_RETRY_AFTER_CAP = 60.0
# The pause before asking again about a create whose key is still in use: the API answers 409
# idempotency_key_in_use for 10 s after a create cut off, then resumes it.
_IN_USE_PAUSE = 5.0


@dataclass
class Call:
    """One request. `content` makes the body afresh for each attempt (a stream cannot be
    replayed); `retry_safe` says whether a failed connection may be tried again (the request
    is a read, carries an idempotency key, or is a POST that changes nothing)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content: Callable[[], Any] | None = None
    extra_timeout: float = 0.0
    # False for a body read from a stream that cannot be rewound: it can be sent only once.
    replayable: bool = True
    # True for a POST that changes nothing (a quote): repeating it is harmless.
    changes_nothing: bool = False

    @property
    def retry_safe(self) -> bool:
        reads = self.method in ("GET", "HEAD", "DELETE") or self.changes_nothing
        return reads or "Idempotency-Key" in self.headers


@dataclass(frozen=True)
class Settings:
    base_url: str
    api_key: str | None
    timeout: float
    max_retries: int

    @classmethod
    def resolve(
        cls, api_key: str | None, base_url: str | None, timeout: float, max_retries: int
    ) -> "Settings":
        """Arguments first, then MAGICPIXELS_API_KEY and MAGICPIXELS_BASE_URL."""
        return cls(
            (base_url or os.environ.get("MAGICPIXELS_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
            api_key or os.environ.get("MAGICPIXELS_API_KEY") or None,
            timeout,
            max_retries,
        )

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"magicpixels-python/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def retry_delay(attempt: int, response: httpx.Response | None) -> float:
    """How long to pause before attempt `attempt + 1`: the answer's Retry-After when it has
    one, else exponential backoff with jitter (at least _IN_USE_PAUSE for a key in use)."""
    asked = _retry_after(response) if response is not None else None
    if asked is not None:
        return min(asked, _RETRY_AFTER_CAP)
    backoff = min(_BACKOFF_BASE * 2**attempt, _BACKOFF_CAP) * random.uniform(0.5, 1.0)
    if response is not None and _key_in_use(response):
        return max(backoff, _IN_USE_PAUSE)
    return backoff


def _retry_after(response: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds (given as seconds or as an HTTP date)."""
    header = response.headers.get("retry-after", "").strip()
    if header.isdigit():
        return float(header)
    with contextlib.suppress(TypeError, ValueError):
        return max(email.utils.parsedate_to_datetime(header).timestamp() - time.time(), 0.0)
    return None


def _key_in_use(response: httpx.Response) -> bool:
    """A 409 saying a request with the same Idempotency-Key is still being answered (its body
    read: `_should_retry` reads a 409's)."""
    if response.status_code != 409:
        return False
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return bool(response.json()["error"]["code"] == "idempotency_key_in_use")
    return False


def _request_args(call: Call, settings: Settings) -> dict[str, Any]:
    """The request, complete in itself: a shared HTTP client is never changed."""
    return {
        "method": call.method,
        "url": settings.base_url + call.path,
        "params": {k: v for k, v in (call.params or {}).items() if v is not None},
        "json": call.json,
        "headers": {**settings.headers(), **call.headers},
        "content": call.content() if call.content else None,
        "timeout": settings.timeout + call.extra_timeout,
    }


def _should_retry(response: httpx.Response, call: Call, attempt: int, settings: Settings) -> bool:
    """Rate limited, for no longer than _RETRY_AFTER_CAP; a service briefly unavailable, when
    repeating the call cannot do anything twice (the call may have been carried out); a key
    still in use by an earlier try of this same call."""
    if attempt >= settings.max_retries or not call.replayable:
        return False
    asked = _retry_after(response)
    if asked is not None and asked > _RETRY_AFTER_CAP:
        return False
    if response.status_code == 429:
        return True
    if response.status_code == 503:
        return call.retry_safe
    return "Idempotency-Key" in call.headers and _key_in_use(response)


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_from_response(response.status_code, body, response.headers)


def json_of(response: httpx.Response) -> Any:
    return response.json() if response.content else None


class SyncTransport:
    def __init__(self, settings: Settings, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.Client()
        self._owned = http is None

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def json(self, call: Call) -> Any:
        with self.stream(call) as response:
            response.read()
            return json_of(response)

    @contextlib.contextmanager
    def stream(self, call: Call) -> Iterator[httpx.Response]:
        """The answer, its body not yet read; an error answer raises its exception."""
        attempt = 0
        while True:
            try:
                request = self._http.build_request(**_request_args(call, self.settings))
                response = self._http.send(request, stream=True)
            except httpx.TransportError as error:
                if not _may_retry_failure(error, call, attempt, self.settings):
                    raise APIConnectionError(f"{type(error).__name__}: {error}") from error
                time.sleep(retry_delay(attempt, None))
                attempt += 1
                continue
            if response.status_code == 409:
                response.read()
            if _should_retry(response, call, attempt, self.settings):
                response.close()
                time.sleep(retry_delay(attempt, response))
                attempt += 1
                continue
            try:
                if not response.is_success:
                    response.read()
                    _raise_for_error(response)
                yield response
            except httpx.TransportError as error:  # the body was cut
                raise _cut(error) from error
            finally:
                response.close()
            return

    def events(self, call: Call) -> Iterator[tuple[str, str]]:
        """The (event, data) pairs of a Server-Sent Events answer, until it ends or is cut
        (after a pause, so that a caller reconnecting at once does not spin)."""
        try:
            with self.stream(call) as response:
                decoder = EventDecoder()
                for line in response.iter_lines():
                    event = decoder.feed(line)
                    if event is not None:
                        yield event
        except _StreamCut:
            time.sleep(retry_delay(0, None))


class AsyncTransport:
    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.AsyncClient()
        self._owned = http is None

    async def close(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def json(self, call: Call) -> Any:
        async with self.stream(call) as response:
            await response.aread()
            return json_of(response)

    @contextlib.asynccontextmanager
    async def stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        """The answer, its body not yet read; an error answer raises its exception."""
        attempt = 0
        while True:
            try:
                request = self._http.build_request(**_request_args(call, self.settings))
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as error:
                if not _may_retry_failure(error, call, attempt, self.settings):
                    raise APIConnectionError(f"{type(error).__name__}: {error}") from error
                await anyio.sleep(retry_delay(attempt, None))
                attempt += 1
                continue
            if response.status_code == 409:
                await response.aread()
            if _should_retry(response, call, attempt, self.settings):
                await response.aclose()
                await anyio.sleep(retry_delay(attempt, response))
                attempt += 1
                continue
            try:
                if not response.is_success:
                    await response.aread()
                    _raise_for_error(response)
                yield response
            except httpx.TransportError as error:  # the body was cut
                raise _cut(error) from error
            finally:
                await response.aclose()
            return

    async def events(self, call: Call) -> AsyncIterator[tuple[str, str]]:
        """As `SyncTransport.events`."""
        try:
            async with self.stream(call) as response:
                decoder = EventDecoder()
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    if event is not None:
                        yield event
        except _StreamCut:
            await anyio.sleep(retry_delay(0, None))


class _StreamCut(APIConnectionError):
    """The connection closed in the middle of an answer's body."""


def _cut(error: httpx.TransportError) -> _StreamCut:
    return _StreamCut(f"the answer was cut: {type(error).__name__}: {error}")


def _may_retry_failure(
    error: httpx.TransportError, call: Call, attempt: int, settings: Settings
) -> bool:
    """A connection never made is safe to retry; a request that may have been received is
    retried only when repeating it cannot do anything twice."""
    sent_nothing = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
    may = sent_nothing or (call.retry_safe and call.replayable)
    return attempt < settings.max_retries and may


class EventDecoder:
    """Server-Sent Events (the WHATWG format), line by line: `feed` answers (event, data)
    when a blank line ends an event; comments (keep-alives) are skipped."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            found = (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return found
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None
