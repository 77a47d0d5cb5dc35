"""Jobs: create, quote, read, list, cancel, and follow them live (long polls and Server-Sent
Events)."""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ConfigDict, Field

from magicpixels.core import eventloop
from magicpixels.core.errors import Unavailable
from magicpixels.gateway import idempotency
from magicpixels.gateway.bodies import Body
from magicpixels.gateway.errors import ApiError, from_domain_error
from magicpixels.gateway.listing import Page, list_object, page
from magicpixels.gateway.principal import Principal, require
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import gateway
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import public

router = APIRouter(prefix="/v1", tags=["jobs"])

# Bounds of the wire types only; the rules of each mode live in the jobs service.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
MODES = {name: mode for mode, name in public.MODE_NAMES.items()} | {
    "audio": jobs_pb2.JOB_MODE_TEXT_TO_AUDIO
}
STATES = {name: state for state, name in public.STATUS_NAMES.items()}
# The longest a request may wait for a job (`?wait=`, `Prefer: wait=`).
MAX_WAIT_SECONDS = 60
# An event stream lasts at most this long; a client reconnects to follow a longer job.
STREAM_SECONDS = 3600
# Sent on a quiet event stream, so proxies keep it open.
KEEPALIVE_SECONDS = 15
# The route a poll of one job takes, which `job_views.AnsweredFromMemory` may answer instead.
JOB_PATH = "/v1/jobs/{job_id}"
# RFC 7240: a preference's name is case-insensitive, and may have spaces around its "=".
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)


class JobCreate(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    mode: str
    prompt: str | None = None
    negative_prompt: str | None = None
    input_asset_id: str | None = None
    audio_asset_id: str | None = None
    width: Int32 | None = None
    height: Int32 | None = None
    seed: Int64 | None = None
    steps: Int32 | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    duration_seconds: float | None = None
    fps: Int32 | None = None
    output_format: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    deadline_seconds: Int32 | None = None

    def to_spec(self) -> jobs_pb2.JobSpec:
        mode = MODES.get(self.mode)
        if mode is None:
            raise ApiError(
                400,
                "invalid_request_error",
                "mode_unknown",
                f"mode must be one of {', '.join(MODES)}",
                param="mode",
            )
        fields = self.model_dump(exclude_none=True, exclude={"mode"})
        return jobs_pb2.JobSpec(mode=mode, **fields)


async def job_json(request: Request, job: jobs_pb2.Job) -> dict[str, Any]:
    url = None
    if job.state == jobs_pb2.JOB_STATE_COMPLETED:
        url = await gateway(request).result_url(job)
    return public.job(job, url)


def _watch(request: Request, job_id: str, principal: Principal, seconds: float) -> Any:
    """The job now, then each change, for at most `seconds` (a WatchJob stream)."""
    watch = jobs_pb2.WatchJobRequest(
        id=job_id, account_id=principal.account_id, livemode=principal.livemode
    )
    return gateway(request).jobs.WatchJob(watch, timeout=seconds + 5)


async def settled(
    request: Request,
    principal: Principal,
    job: jobs_pb2.Job,
    seconds: float,
    until: str,
    drain: bool = True,
) -> jobs_pb2.Job:
    """The job once its status changed (`until="change"`) or it ended (`"end"`), or as it is
    after `seconds` or, with `drain`, when the gateway begins to stop, whichever comes first."""
    draining = gateway(request).draining
    if seconds <= 0 or job.state in public.TERMINAL or (drain and draining.is_set()):
        return job
    stream = _watch(request, job.id, principal, seconds)
    latest = job

    async def follow() -> None:
        nonlocal latest
        async for event in stream:
            latest = event.job
            if latest.state in public.TERMINAL or (until == "change" and latest.state != job.state):
                return

    stops = (draining.wait(),) if drain else ()
    try:
        await eventloop.unless(follow(), *stops, seconds=seconds)
    finally:
        stream.cancel()
    return latest


def _preferred_wait(request: Request) -> int | None:
    """`Prefer: wait=N` (RFC 7240), within 0..60 s."""
    found = _PREFER_WAIT.search(request.headers.get("prefer", ""))
    return min(int(found.group(1)), MAX_WAIT_SECONDS) if found else None


@router.post("/jobs", status_code=201)
async def create_job(
    body: JobCreate,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:write"))],
) -> JSONResponse:
    """Creates a job and holds its price in credits (402 when the account cannot cover it).

    With `Idempotency-Key`, a repeat of the same body within 24 h answers the same job, as it
    is now, with `Idempotent-Replayed: true`; nothing is created or charged twice. With
    `Prefer: wait=N` it answers when the job ends (200) or after N seconds (201).
    """
    created, headers = await create(request, principal, body.to_spec(), idempotency.key_of(request))
    wait = _preferred_wait(request)
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
        created = await settled(request, principal, created, wait, until="end")
    status = 200 if created.state in public.TERMINAL and wait is not None else 201
    return JSONResponse(await job_json(request, created), status_code=status, headers=headers)


async def create(
    request: Request,
    principal: Principal,
    spec: jobs_pb2.JobSpec,
    idempotency_key: str,
    request_digest: bytes = b"",
) -> tuple[jobs_pb2.Job, dict[str, str]]:
    """Creates a job for the principal: the job, and the headers saying whether it is the one
    an earlier create with the key made."""
    call = gateway(request).jobs.CreateJob(
        jobs_pb2.CreateJobRequest(
            account_id=principal.account_id,
            livemode=principal.livemode,
            spec=spec,
            idempotency_key=idempotency_key,
            request_digest=request_digest,
        )
    )
    created: jobs_pb2.Job = await call
    return created, await idempotency.replay_headers(call)


async def quote(
    request: Request, principal: Principal, spec: jobs_pb2.JobSpec
) -> jobs_pb2.QuoteJobResponse:
    """What a job of the spec would cost the principal, checked as its create would be."""
    quoted: jobs_pb2.QuoteJobResponse = await gateway(request).jobs.QuoteJob(
        jobs_pb2.QuoteJobRequest(
            account_id=principal.account_id, livemode=principal.livemode, spec=spec
        )
    )
    return quoted


@router.post("/jobs/quote")
async def quote_job(
    body: JobCreate,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:write"))],
) -> JSONResponse:
    """Prices a job without creating it: the body and its checks are those of `POST /v1/jobs`
    (input assets included), and nothing is created, held or written to the ledger."""
    quoted = await quote(request, principal, body.to_spec())
    return JSONResponse(
        {
            "object": "quote",
            "mode": public.MODE_NAMES[quoted.mode],
            "cost_credits": quoted.cost_credits,
            "available_credits": quoted.available_credits,
            "sufficient": quoted.sufficient,
        }
    )


@router.get("/jobs")
async def list_jobs(
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
    listing: Annotated[Page, Depends(page)],
    status: Annotated[str | None, Query(description=", ".join(STATES))] = None,
    mode: Annotated[str | None, Query(description=", ".join(MODES))] = None,
) -> JSONResponse:
    """The key's jobs (live or test), newest first, optionally of one status and mode."""
    found = await gateway(request).jobs.ListJobs(
        jobs_pb2.ListJobsRequest(
            account_id=principal.account_id,
            livemode=principal.livemode,
            state=_choice(STATES, status, "status"),
            mode=_choice(MODES, mode, "mode"),
            **listing.rpc,
        )
    )
    data = list(await asyncio.gather(*(job_json(request, job) for job in found.jobs)))
    return JSONResponse(list_object(data, found.next_page_token))


def _choice(options: dict[str, int], value: str | None, param: str) -> int:
    if value is None:
        return 0
    if value not in options:
        message = f"{param} must be one of {', '.join(options)}"
        raise ApiError(400, "invalid_request_error", "parameter_invalid", message, param=param)
    return options[value]


@router.get(JOB_PATH.removeprefix("/v1"))
async def get_job(
    job_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
    wait: Annotated[int, Query(ge=0, le=MAX_WAIT_SECONDS, description="long-poll seconds")] = 0,
) -> JSONResponse:
    """The job; with `?wait=N`, answers as soon as its status changes or it ends, or after N s."""
    views = gateway(request).job_views
    view = views.get(job_id, principal)
    if view is not None and (wait == 0 or view.terminal):
        return Response(view.body, media_type=JSONResponse.media_type)
    ticket = views.ticket()
    found = await gateway(request).jobs.GetJob(
        jobs_pb2.GetJobRequest(
            id=job_id, account_id=principal.account_id, livemode=principal.livemode
        )
    )
    found = await settled(request, principal, found, wait, until="change")
    answer = JSONResponse(await job_json(request, found))
    views.put(found, answer.body, ticket)
    return answer


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    job_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:write"))],
) -> JSONResponse:
    """Cancels a queued or running job and releases its hold; a finished one is 409."""
    return JSONResponse(await job_json(request, await cancel(request, principal, job_id)))


async def cancel(
    request: Request, principal: Principal, job_id: str, free_idempotency_key: bool = False
) -> jobs_pb2.Job:
    """Cancels the job for the principal; what the gateway keeps of it is dropped."""
    canceled: jobs_pb2.Job = await gateway(request).jobs.CancelJob(
        jobs_pb2.CancelJobRequest(
            id=job_id,
            account_id=principal.account_id,
            livemode=principal.livemode,
            free_idempotency_key=free_idempotency_key,
        )
    )
    gateway(request).job_views.forget(job_id)
    return canceled


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse)
async def job_events(
    job_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
) -> StreamingResponse:
    """Server-Sent Events: `status`, `progress` and `queue_position` as they change; ends after
    the last status."""
    events = EventPump(
        _watch(request, job_id, principal, STREAM_SECONDS), gateway(request).draining
    )
    first = await events.first()  # a job this key may not see is a 404, before streaming
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        events.server_sent(request, first), media_type="text/event-stream", headers=headers
    )


_EVENT_NAMES = {
    jobs_pb2.JOB_EVENT_TYPE_STATUS: "status",
    jobs_pb2.JOB_EVENT_TYPE_PROGRESS: "progress",
    jobs_pb2.JOB_EVENT_TYPE_QUEUE_POSITION: "queue_position",
}


class EventPump:
    """Reads a WatchJob stream in a task of its own, so waiting for the next event can time
    out (for keep-alives) without cancelling a read of the stream. The events end early when
    `draining` is set: the client's EventSource reconnects, to a gateway that serves on."""

    def __init__(self, stream: Any, draining: asyncio.Event) -> None:
        self._stream = stream
        self._events: asyncio.Queue[jobs_pb2.JobEvent | BaseException | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(draining))

    async def _pump(self, draining: asyncio.Event) -> None:
        await eventloop.unless(self._read(), draining.wait())
        await self._events.put(None)

    async def _read(self) -> None:
        try:
            async for event in self._stream:
                await self._events.put(event)
        except grpc.aio.AioRpcError as error:
            await self._events.put(error)

    async def first(self) -> jobs_pb2.JobEvent:
        found = await self._events.get()
        if not isinstance(found, jobs_pb2.JobEvent):
            self.close()
            # None: the gateway began to stop before the job's first event came
            raise found or from_domain_error(Unavailable("SERVICE_UNAVAILABLE", "stopping"))
        return found

    async def server_sent(self, request: Request, first: jobs_pb2.JobEvent) -> AsyncIterator[bytes]:
        event: jobs_pb2.JobEvent | BaseException | None = first
        try:
            while isinstance(event, jobs_pb2.JobEvent):
                data = json.dumps(await job_json(request, event.job), separators=(",", ":"))
                yield f"event: {_EVENT_NAMES[event.type]}\ndata: {data}\n\n".encode()
                if (
                    event.type == jobs_pb2.JOB_EVENT_TYPE_STATUS
                    and event.job.state in public.TERMINAL
                ):
                    return
                event = await self._next_or_keepalive()
                while event is _KEEPALIVE:
                    yield b": keep-alive\n\n"
                    event = await self._next_or_keepalive()
        finally:
            self.close()

    async def _next_or_keepalive(self) -> Any:
        try:
            return await asyncio.wait_for(self._events.get(), KEEPALIVE_SECONDS)
        except TimeoutError:
            return _KEEPALIVE

    def close(self) -> None:
        self._task.cancel()
        self._stream.cancel()


_KEEPALIVE = object()
