"""The JobsService servicer (decode, call the domain and the store, encode) and its Service."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core import idempotency, metrics, paging, tracing
from magicpixels.core.bus import EventBus
from magicpixels.core.context import time_left
from magicpixels.core.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from magicpixels.core.server import ServiceBinding
from magicpixels.core.service import Mesh, open_database
from magicpixels.core.settings import JobsSettings
from magicpixels.core.timestamps import as_utc, to_timestamp, utcnow
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.jobs import domain, store
from magicpixels.services.jobs.deadlines import DeadlineTimer
from magicpixels.services.jobs.domain import State
from magicpixels.services.jobs.inputs import InputLookup
from magicpixels.services.jobs.reconciler import Reconciler
from magicpixels.services.jobs.settlement import Settlement
from magicpixels.services.jobs.signals import (
    DEADLINES_CHANNEL,
    QUEUE_MOVED_CHANNEL,
    QUEUED_CHANNEL,
    WEBHOOKS_CHANNEL,
    Hints,
    QueueMoves,
    QueueSignal,
    announce,
    announce_progress,
    changed_channel,
)
from magicpixels.services.jobs.store import JobRow
from magicpixels.services.jobs.webhooks import WebhookDispatcher

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name
# A waiting LeaseJob answers this long before its caller's deadline, so the answer arrives.
_DEADLINE_MARGIN_SECONDS = 0.5


class JobsServicer(jobs_pb2_grpc.JobsServiceServicer):
    def __init__(
        self,
        engine: AsyncEngine,
        settlement: Settlement,
        inputs: InputLookup,
        bus: EventBus,
        signal: QueueSignal,
        settings: JobsSettings,
        queue_moves: QueueMoves,
    ) -> None:
        self._engine = engine
        self._settlement = settlement
        self._inputs = inputs
        self._bus = bus
        self._signal = signal
        self._settings = settings
        self._queue_moves = queue_moves
        self._webhook_policy = domain.WebhookPolicy.allowing(settings.webhook_allowed_hosts)

    async def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        """Creates a job and holds its price, at most once per idempotency key of the account.

        When a request of the last 24 h claimed the key already, this one is answered with the
        job that request created (flagged by the trailing metadata `idempotent-replayed: true`),
        refused as IDEMPOTENCY_KEY_REUSED when its body differs, or as IDEMPOTENCY_KEY_IN_USE
        while that job is still being created. A create refused for good (insufficient credits,
        say) frees its key: Stripe replays errors, but a refused create created nothing, so we
        let the client retry it with the same key.
        """
        domain.require(request.account_id, "account_id")
        spec = await self._resolve(request.account_id, request.livemode, request.spec)
        claim = domain.idempotency_claim(request)
        pending = await store.insert_pending(
            self._engine,
            request.account_id,
            request.livemode,
            spec,
            claim,
            utcnow(),
            trace_parent=tracing.current_traceparent(),
        )
        if pending is None:
            assert claim is not None  # only a claimed key stops the insert
            return await self._replay(request.account_id, claim, context)
        if not pending.livemode:
            await self._limit_test_jobs(pending)
        job, position = await self._settlement.hold(pending, spec)
        metrics.JOBS_CREATED.labels("jobs", job.mode).inc()
        await announce(self._bus, job)
        if position is None:
            return await self._encode(job)
        return store.job_message(job, position)

    async def _limit_test_jobs(self, pending: JobRow) -> None:
        """Refuses a new test-mode job past the account's limit of unended ones, counted once it
        is inserted, its own included: creates at once may be refused one too many, never
        admitted one too many. Refused, it fails as a refused hold does, freeing its key."""
        limit = self._settings.max_unended_test_jobs
        if await store.count_unended_test_jobs(self._engine, pending.account_id) <= limit:
            return
        message = (
            f"at most {limit} test-mode jobs may be pending, queued or running at once; "
            "retry when one has ended"
        )
        refusal = jobs_pb2.JobError(code="rate_limited", message=message)
        await store.fail_pending(self._engine, pending.id, refusal, utcnow())
        raise ResourceExhausted("RATE_LIMITED", message)

    async def _resolve(
        self, account_id: str, livemode: bool, spec: jobs_pb2.JobSpec
    ) -> jobs_pb2.JobSpec:
        inputs = await self._inputs.describe(account_id, livemode, spec)
        resolved = domain.resolve_spec(spec, inputs)
        self._webhook_policy.check(resolved.webhook_url)
        return resolved

    async def _replay(
        self, account_id: str, claim: idempotency.Claim, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        """The job an earlier request with the same key created, if this is the same request."""
        created = await store.claimed(self._engine, account_id, claim.key)
        if created is None:  # the claim was freed since: its create failed; try again
            raise idempotency.key_in_use()
        job: JobRow = created
        if (
            created.request_hash == claim.request_hash
            and created.state == State.PENDING
            and utcnow() - as_utc(created.created_at) >= domain.RESUME_PENDING_AFTER
        ):  # the call that created it died before its hold was known (a crash, billing down)
            job = (await self._settlement.hold(created, store.spec_of(created))).job
            await announce(self._bus, job)
        domain.check_replay(claim, created.request_hash, job.state)
        context.set_trailing_metadata(idempotency.REPLAYED)
        return await self._encode(job)

    async def QuoteJob(
        self, request: jobs_pb2.QuoteJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.QuoteJobResponse:
        domain.require(request.account_id, "account_id")
        spec = await self._resolve(request.account_id, request.livemode, request.spec)
        quote = await self._settlement.quote(request.account_id, request.livemode, spec)
        return jobs_pb2.QuoteJobResponse(
            mode=spec.mode,
            cost_credits=quote.cost_credits,
            available_credits=quote.available_credits,
            sufficient=quote.sufficient,
        )

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        found = await store.get_visible_placed(self._engine, request.id, request.account_id)
        job, position = found or (None, None)
        return store.job_message(_requested(request, job), position)

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        limit = paging.page_size(request.page_size)
        found = await store.list_visible(
            self._engine,
            request.account_id,
            request.livemode,
            limit=limit + 1,
            before_id=_page_token(request.page_token),
            state=domain.state_filter(request.state),
            mode=domain.mode_filter(request.mode),
        )
        jobs, next_page_token = paging.page(found, limit)
        return jobs_pb2.ListJobsResponse(
            jobs=[await self._encode(job) for job in jobs], next_page_token=next_page_token
        )

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        await self._visible(request)
        job = await store.cancel(
            self._engine,
            request.id,
            request.account_id,
            utcnow(),
            free_idempotency_key=request.free_idempotency_key,
        )
        if job is None:
            ended = await self._visible(request)
            message = f"job {ended.id} is already {ended.state}"
            raise FailedPrecondition("JOB_NOT_CANCELABLE", message)
        await announce(self._bus, job)
        self._settlement.settle_soon(job)
        return await self._encode(job)

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        """The job, then each change of its status, progress or queue position."""
        async with AsyncExitStack() as stack:
            hints = Hints(stack)
            # Followed before the reads, so no change after them goes unseen.
            changes = self._bus.subscribe(changed_channel(request.id))
            hints.follow("job", await stack.enter_async_context(changes))
            row = await self._visible(request)
            hints.follow("queue", self._queue_moves.of(row.mode))
            row = await self._visible(request)
            job = await self._encode(row)
            yield _event(job, jobs_pb2.JOB_EVENT_TYPE_STATUS, row.updated_at)
            while not domain.is_terminal(row.state):
                hinted = await hints.next()
                if row.state != State.QUEUED and hinted == {"queue"}:
                    continue  # the queue moved, but this job is not in it
                previous, row = job, await self._visible(request)
                job = await self._encode(row)
                change = _change(previous, job)
                if change == jobs_pb2.JOB_EVENT_TYPE_QUEUE_POSITION:
                    # Another job moved: this one was not updated.
                    yield _event(job, change, utcnow())
                elif change:
                    yield _event(job, change, row.updated_at)

    async def LeaseJob(
        self, request: jobs_pb2.LeaseJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.LeaseJobResponse:
        domain.require(request.worker_id, "worker_id")
        modes = domain.lease_modes(request.modes)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + _lease_wait(request.wait.ToTimedelta().total_seconds())
        while True:
            ticket = self._signal.ticket()
            lease = await self._try_lease(modes, request.worker_id)
            remaining = give_up_at - loop.time()
            if lease.HasField("lease") or remaining <= 0:
                return lease
            await self._signal.wait(ticket, remaining)

    async def ReportProgress(
        self, request: jobs_pb2.ReportProgressRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ReportProgressResponse:
        domain.check_progress(request.progress)
        job = await store.record_progress(
            self._engine,
            request.job_id,
            request.lease_token,
            request.progress,
            self._lease_for(),
            utcnow(),
        )
        if job is not None:
            await announce_progress(self._bus, job)
            expire_time = to_timestamp(job.lease_expires_at)
            return jobs_pb2.ReportProgressResponse(lease_expire_time=expire_time)
        current = await store.get_job(self._engine, request.job_id)
        if current is not None and _canceled_under(current, request.lease_token):
            return jobs_pb2.ReportProgressResponse(canceled=True)
        raise _lease_refusal(current, request.job_id)

    async def CompleteJob(
        self, request: jobs_pb2.CompleteJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        """Completes the job; completing it again with the same lease and result answers the
        job as it is, so a worker whose answer was lost may retry."""
        domain.require(request.result.asset_id, "result.asset_id")
        job = await store.complete(
            self._engine, request.job_id, request.lease_token, request.result, utcnow()
        )
        if job is not None:
            return await self._ended(job, request.job_id)
        current = await store.get_job(self._engine, request.job_id)
        if current is None or not _completed_under(current, request):
            raise _lease_refusal(current, request.job_id)
        return await self._encode(current)

    async def FailJob(
        self, request: jobs_pb2.FailJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        domain.require(request.error.code, "error.code")
        current = await store.get_job(self._engine, request.job_id)
        if current is None or not _leased_under(current, request.lease_token):
            raise _lease_refusal(current, request.job_id)
        now, token = utcnow(), request.lease_token
        if request.retryable and domain.may_retry(current.attempts, self._settings.max_attempts):
            not_before = now + domain.retry_delay(current.attempts)
            job = await store.requeue(self._engine, current.id, token, not_before, now)
            if job is not None:
                metrics.JOB_RETRIES.labels("jobs", job.mode).inc()
        else:
            job = await store.fail(self._engine, current.id, token, request.error, now)
        return await self._ended(job, request.job_id)

    async def _ended(self, job: JobRow | None, job_id: str) -> jobs_pb2.Job:
        """Announces a job a worker let go of and, when it ended, settles its hold after."""
        if job is None:
            raise _lease_refusal(await store.get_job(self._engine, job_id), job_id)
        await announce(self._bus, job)
        self._settlement.settle_soon(job)
        return await self._encode(job)

    async def _try_lease(self, modes: Sequence[str], worker_id: str) -> jobs_pb2.LeaseJobResponse:
        job = await store.lease_next(self._engine, modes, worker_id, self._lease_for(), utcnow())
        if job is None:
            return jobs_pb2.LeaseJobResponse()
        if job.attempts == 1:
            waited = (job.started_at - job.created_at).total_seconds()
            metrics.JOB_LEASE_WAIT.labels("jobs", job.mode).observe(waited)
        await announce(self._bus, job)
        lease = jobs_pb2.Lease(
            job=await self._encode(job),
            token=job.lease_token,
            expire_time=to_timestamp(job.lease_expires_at),
        )
        return jobs_pb2.LeaseJobResponse(lease=lease)

    def _lease_for(self) -> timedelta:
        return timedelta(seconds=self._settings.lease_seconds)

    async def _visible(
        self, request: jobs_pb2.CancelJobRequest | jobs_pb2.WatchJobRequest
    ) -> JobRow:
        """The account's job the request names; of the mode it names, when it names one."""
        job = await store.get_visible(self._engine, request.id, request.account_id)
        return _requested(request, job)

    async def _encode(self, job: JobRow) -> jobs_pb2.Job:
        if job.state != State.QUEUED:
            return store.job_message(job)
        return store.job_message(job, await store.queue_position(self._engine, job))


def _requested(
    request: jobs_pb2.GetJobRequest | jobs_pb2.CancelJobRequest | jobs_pb2.WatchJobRequest,
    job: JobRow | None,
) -> JobRow:
    """The job found for the request; NOT_FOUND without one, or for one of another mode than
    the request names."""
    other_mode = (
        request.HasField("livemode") and job is not None and job.livemode != request.livemode
    )
    if job is None or other_mode:
        raise NotFound("JOB_NOT_FOUND", f"no job {request.id}")
    return job


def _event(job: jobs_pb2.Job, kind: int, at: datetime) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(type=kind, job=job, event_time=to_timestamp(at))


def _change(previous: jobs_pb2.Job, current: jobs_pb2.Job) -> int | None:
    """The kind of change a watcher is told about, if any."""
    if current.state != previous.state:
        return jobs_pb2.JOB_EVENT_TYPE_STATUS
    if current.progress != previous.progress:
        return jobs_pb2.JOB_EVENT_TYPE_PROGRESS
    if _position(current) != _position(previous):
        return jobs_pb2.JOB_EVENT_TYPE_QUEUE_POSITION
    return None


def _position(job: jobs_pb2.Job) -> int | None:
    return job.queue_position if job.HasField("queue_position") else None


def _lease_wait(requested: float) -> float:
    """Seconds a LeaseJob may wait: what it asked, within the cap and the caller's deadline."""
    wait = min(max(requested, 0.0), domain.MAX_LEASE_WAIT_SECONDS)
    left = time_left()
    return wait if left is None else min(wait, left - _DEADLINE_MARGIN_SECONDS)


def _page_token(token: str) -> str | None:
    if token and not token.startswith("job_"):
        raise InvalidArgument("PARAMETER_INVALID", "page_token is not a job id", param="page_token")
    return token or None


def _leased_under(job: JobRow, token: int) -> bool:
    return job.state == State.RUNNING and job.lease_token == token


def _canceled_under(job: JobRow, token: int) -> bool:
    return job.state == State.CANCELED and job.lease_token == token


def _completed_under(job: JobRow, request: jobs_pb2.CompleteJobRequest) -> bool:
    """Whether this very completion, lease and result, was recorded already."""
    same_result = job.result_asset_id == request.result.asset_id
    return job.state == State.COMPLETED and job.lease_token == request.lease_token and same_result


def _lease_refusal(job: JobRow | None, job_id: str) -> DomainError:
    if job is None:
        return NotFound("JOB_NOT_FOUND", f"no job {job_id}")
    return FailedPrecondition("LEASE_LOST", f"this lease of job {job_id} is no longer held; stop")


class JobsService:
    name = "jobs"

    def __init__(self, mesh: Mesh, settings: JobsSettings) -> None:
        self.settings = settings
        self._mesh = mesh
        self._engine: AsyncEngine | None = None
        self._settlement: Settlement | None = None
        self._dispatcher: WebhookDispatcher | None = None
        self._subscriptions = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> list[ServiceBinding]:
        engine = await open_database(
            self._mesh.settings, self.settings, "jobs", "magicpixels.services.jobs.migrations"
        )
        self._engine = engine
        settlement = Settlement(engine, self._mesh)
        self._settlement = settlement
        signal = QueueSignal()
        # Subscribed before serving, so no job queued from now on goes unnoticed.
        queued_hints = await self._subscriptions.enter_async_context(
            self._mesh.bus.subscribe(QUEUED_CHANNEL)
        )
        reconciler = Reconciler(engine, settlement, self._mesh.bus, self.settings)
        webhook_hints = await self._subscriptions.enter_async_context(
            self._mesh.bus.subscribe(WEBHOOKS_CHANNEL)
        )
        dispatcher = WebhookDispatcher(engine, self._mesh, self.settings)
        self._dispatcher = dispatcher
        deadline_hints = await self._subscriptions.enter_async_context(
            self._mesh.bus.subscribe(DEADLINES_CHANNEL)
        )
        deadlines = DeadlineTimer(engine, settlement, self._mesh.bus)
        queue_moves = QueueMoves()
        queue_hints = await self._subscriptions.enter_async_context(
            self._mesh.bus.subscribe(QUEUE_MOVED_CHANNEL)
        )
        self._tasks = [
            asyncio.create_task(signal.follow(queued_hints)),
            asyncio.create_task(reconciler.run()),
            asyncio.create_task(dispatcher.follow(webhook_hints)),
            asyncio.create_task(dispatcher.run()),
            asyncio.create_task(deadlines.follow(deadline_hints)),
            # Reads the pending deadlines first: those set before a restart fire too.
            asyncio.create_task(deadlines.run()),
            asyncio.create_task(queue_moves.follow(queue_hints)),
        ]
        servicer = JobsServicer(
            engine,
            settlement,
            InputLookup(self._mesh),
            self._mesh.bus,
            signal,
            self.settings,
            queue_moves,
        )
        add = jobs_pb2_grpc.add_JobsServiceServicer_to_server
        return [ServiceBinding(SERVICE_NAME, servicer, add)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._dispatcher is not None:
            await self._dispatcher.close()
        if self._settlement is not None:
            await self._settlement.close()
        await self._subscriptions.aclose()
        if self._engine is not None:
            await self._engine.dispose()
