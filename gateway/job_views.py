"""Jobs as this gateway last answered them, so that polling `GET /v1/jobs/{id}` is answered from
memory instead of a call to the jobs service.

The jobs service announces every change a client may read (`VIEWS_CHANNEL`): the job's id, and
whether the change moved the jobs behind it in its queue. A changed job is forgotten at once;
a queue move makes every queued job read before it stale, since its `queue_position` may have
changed. Entries live `job_cache_seconds` at most, which bounds what an announcement lost in
flight (Redis pub/sub is at-most-once) could leave stale; while the announcements are not
followed nothing is kept (see `hinted`).
"""

from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from magicpixels.core.bus import EventBus
from magicpixels.gateway.hinted import HintedCache, follow
from magicpixels.gateway.principal import Principal, resolved_principal
from magicpixels.gateway.responses import JSONResponse
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs.public import TERMINAL
from magicpixels.services.jobs.signals import VIEWS_CHANNEL

_JOBS_PATH = "/v1/jobs/"
_HEADERS = [(b"content-type", JSONResponse.media_type.encode())]


@dataclass(frozen=True)
class JobView:
    """A job's JSON body as answered, and what decides who may see it and for how long."""

    account_id: str
    livemode: bool
    terminal: bool
    # For a queued job: how many queue moves this gateway had heard of before reading it.
    queue_moves: int | None
    body: bytes


@dataclass(frozen=True)
class ViewTicket:
    drops: int
    queue_moves: int


class JobViews:
    def __init__(self, ttl: float) -> None:
        self.cache: HintedCache[JobView] = HintedCache(ttl)
        self._queue_moves = 0

    def get(self, job_id: str, principal: Principal) -> JobView | None:
        """The job's view, when it is the principal's and still current; None otherwise (the
        caller then asks the jobs service, which also says 404 for another account's job)."""
        view = self.cache.get(job_id)
        if view is None or view.account_id != principal.account_id:
            return None
        if view.livemode != principal.livemode:
            return None
        if view.queue_moves is not None and view.queue_moves != self._queue_moves:
            return None
        return view

    def ticket(self) -> ViewTicket:
        """Taken before the jobs service is asked, for `put`."""
        return ViewTicket(self.cache.ticket(), self._queue_moves)

    def put(self, job: jobs_pb2.Job, body: bytes, ticket: ViewTicket) -> None:
        queued = job.state == jobs_pb2.JOB_STATE_QUEUED
        view = JobView(
            job.account_id,
            job.livemode,
            job.state in TERMINAL,
            ticket.queue_moves if queued else None,
            body,
        )
        self.cache.put(job.id, view, ticket.drops)

    def forget(self, job_id: str) -> None:
        """Drops what this gateway just changed, before it answers the change, so its own
        client never reads the old view (the announcement may come later)."""
        self.cache.drop(job_id)

    def forget_all(self) -> None:
        """After a change this gateway made to what some views show (a result deleted)."""
        self.cache.clear()

    def heard(self, hint: bytes) -> None:
        job_id, _, moved = hint.decode().partition(" ")
        self.cache.drop(job_id)
        if moved:
            self._queue_moves += 1

    async def follow(self, bus: EventBus) -> None:
        """Follows the jobs service's announcements until cancelled."""
        await follow(bus, VIEWS_CHANNEL, self.cache, self.heard)


class AnsweredFromMemory:
    """Pure ASGI, behind the rate limiter: a plain `GET /v1/jobs/{id}` whose job this gateway
    holds for the request's principal is answered here, without the framework's routing and
    dependencies (most of a poll's cost); any other request goes on to the app. `route` is the
    app's route of that path, which metrics and traces name the request by."""

    def __init__(self, app: ASGIApp, views: JobViews, route: Any) -> None:
        self.app = app
        self._views = views
        self._route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = self._view(scope) if scope["type"] == "http" else None
        if view is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route
        headers = [*_HEADERS, (b"content-length", str(len(view.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": view.body})

    def _view(self, scope: Scope) -> JobView | None:
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(_JOBS_PATH) or scope["query_string"]:
            return None
        job_id = path[len(_JOBS_PATH) :]
        principal = resolved_principal(scope)
        if "/" in job_id or principal is None or "jobs:read" not in principal.scopes:
            return None
        return self._views.get(job_id, principal)
