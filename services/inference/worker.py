"""The worker loop: lease a job, run its backend, store the result in assets, complete the job.

A heartbeat runs beside the backend: it reports progress, keeps the lease alive, and learns
when the job was canceled (or its lease lost), in which case the result is thrown away.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import structlog
from google.protobuf.duration_pb2 import Duration

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.core import tracing
from magicpixels.core.errors import DomainError, remote_error
from magicpixels.core.timestamps import from_timestamp, utcnow
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.inference.backends import Backends, job_backend
from magicpixels.services.inference.inputs import fetch_inputs
from magicpixels.services.inference.media import Canceled, EncodedMedia

log = structlog.get_logger("magicpixels.inference.worker")

CHUNK_BYTES = 64 * 1024
# After a failed LeaseJob (jobs unreachable) wait this long before asking again.
RETRY_SECONDS = 1.0
# Tries of a CompleteJob whose outcome stays unknown (jobs unreachable or too slow).
COMPLETE_ATTEMPTS = 5
# Tries of a call to assets while it is unreachable: 1 + 2 + 4 + 8 s between them.
ASSETS_ATTEMPTS = 5
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
T = TypeVar("T")


@dataclass
class Heartbeat:
    """Carries progress from the backend's thread to the jobs service while the job runs."""

    jobs: jobs_pb2_grpc.JobsServiceStub
    lease: jobs_pb2.Lease
    progress: float = 0.0
    # The job is no longer this worker's: canceled, or its lease lost to another worker.
    abandoned: bool = False
    # The backend is done: no beat may follow (the result is being delivered or given up).
    finished: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def report_from_thread(self, loop: asyncio.AbstractEventLoop, fraction: float) -> None:
        """The backend's progress callback: stops the backend once nobody wants its result."""
        if self.abandoned:
            raise Canceled("the job is no longer this worker's")
        loop.call_soon_threadsafe(self._set_progress, fraction)

    def _set_progress(self, fraction: float) -> None:
        self.progress = max(self.progress, min(fraction, 1.0))
        self._changed.set()

    def finish(self) -> None:
        """Stops the beats. Cancelling `run` alone is not enough: on Python 3.11 a wait_for
        whose event is set (the backend's last progress) as the cancel arrives swallows the
        cancel, and the beats went on until the completed job's lease was refused."""
        self.finished = True
        self._changed.set()

    async def run(self) -> None:
        while not (self.abandoned or self.finished):
            seconds_left = (from_timestamp(self.lease.expire_time) - utcnow()).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=max(seconds_left / 3, 0.05))
            self._changed.clear()
            if not self.finished:
                await self._beat()

    async def _beat(self) -> None:
        request = jobs_pb2.ReportProgressRequest(
            job_id=self.lease.job.id, lease_token=self.lease.token, progress=self.progress
        )
        try:
            reply = await self.jobs.ReportProgress(request)
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT:
                return  # the lease may still hold; the next beat tries again
            log.warning("lease_lost", job_id=self.lease.job.id, reason=remote_error(error).reason)
            self.abandoned = True
            return
        if reply.canceled:
            log.info("job_canceled_while_running", job_id=self.lease.job.id)
            self.abandoned = True
        else:
            self.lease.expire_time.CopyFrom(reply.lease_expire_time)


class Worker:
    def __init__(
        self,
        worker_id: str,
        jobs: jobs_pb2_grpc.JobsServiceStub,
        assets: assets_pb2_grpc.AssetsServiceStub,
        backends: Backends,
        lease_wait_seconds: float,
    ) -> None:
        self.worker_id = worker_id
        self.jobs = jobs
        self.assets = assets
        self.backends = backends
        self.lease_wait_seconds = lease_wait_seconds
        self.modes = sorted(backends)
        self._stopping = False
        self._leasing: asyncio.Task[jobs_pb2.Lease | None] | None = None
        self._lease_asked_ns = 0

    async def run_forever(self) -> None:
        """Leases and runs jobs until `stop`; a job in hand is finished first."""
        while not self._stopping:
            self._leasing = asyncio.create_task(self.lease())
            try:
                lease = await self._leasing
            except asyncio.CancelledError:
                if self._stopping:
                    return  # the lease call was waiting for work: nothing is lost
                raise
            if lease is not None:
                await self.process(lease)

    def stop(self) -> None:
        self._stopping = True
        if self._leasing is not None:
            self._leasing.cancel()

    async def lease(self) -> jobs_pb2.Lease | None:
        wait = Duration()
        wait.FromNanoseconds(int(self.lease_wait_seconds * 1e9))
        request = jobs_pb2.LeaseJobRequest(worker_id=self.worker_id, modes=self.modes, wait=wait)
        self._lease_asked_ns = time.time_ns()
        try:
            reply = await self.jobs.LeaseJob(request, timeout=self.lease_wait_seconds + 10)
        except grpc.aio.AioRpcError as error:
            log.warning("lease_failed", code=error.code().name)
            await asyncio.sleep(RETRY_SECONDS)
            return None
        return reply.lease if reply.HasField("lease") else None

    async def process(self, lease: jobs_pb2.Lease) -> None:
        with (
            structlog.contextvars.bound_contextvars(job_id=lease.job.id),
            # Its spans, and its calls', join the trace of the request that created the job.
            tracing.joined(lease.job.trace_parent),
        ):
            self._trace_lease(lease.job)
            heartbeat = Heartbeat(self.jobs, lease)
            beating = asyncio.create_task(heartbeat.run())
            try:
                media = await self._generate(lease.job, heartbeat)
            except asyncio.CancelledError:  # stopped past the grace period: hand the job back now
                await asyncio.shield(
                    self._fail(lease, "worker_stopped", "the worker stopped", retryable=True)
                )
                raise
            except Canceled:  # the heartbeat let the job go: nothing to report
                return
            except DomainError as error:
                await self._fail(lease, error.reason.lower(), error.message, retryable=False)
                return
            except grpc.aio.AioRpcError as error:  # an input could not be read
                await self._fail_input(lease, error)
                return
            except Exception:
                log.exception("generation_failed")
                await self._fail(
                    lease, "generation_failed", "the model failed on this job", retryable=False
                )
                return
            finally:
                heartbeat.finish()
                beating.cancel()
            if not heartbeat.abandoned:  # else canceled or leased again: nobody wants the result
                await self._deliver(lease, media)

    def _trace_lease(self, job: jobs_pb2.Job) -> None:
        """A span from when this worker asked (or the job was created, if later) to its lease."""
        waited_from = max(self._lease_asked_ns, job.create_time.ToNanoseconds())
        with tracing.span("inference.lease", _span_attributes(job), start_time=waited_from):
            pass

    async def _generate(self, job: jobs_pb2.Job, heartbeat: Heartbeat) -> EncodedMedia:
        loop = asyncio.get_running_loop()
        backend = job_backend(job, self.backends)
        with tracing.span("inference.generate", _span_attributes(job)):
            inputs = await asking_again(
                lambda: fetch_inputs(lambda: self.assets, job.spec, job.account_id),
                retry_on=_TRANSIENT,
            )
            return await asyncio.to_thread(
                backend.generate,
                job.spec,
                inputs,
                lambda fraction: heartbeat.report_from_thread(loop, fraction),
            )

    async def _fail_input(self, lease: jobs_pb2.Lease, error: grpc.aio.AioRpcError) -> None:
        """An input gone (deleted meanwhile) fails the job; assets unreachable hands it back."""
        found = remote_error(error)
        await self._fail(
            lease,
            found.reason.lower() or "input_unavailable",
            found.message or "an input asset could not be read",
            retryable=error.code() in _TRANSIENT,
        )

    async def _deliver(self, lease: jobs_pb2.Lease, media: EncodedMedia) -> None:
        with tracing.span("inference.upload_result", {"magicpixels.size_bytes": len(media.data)}):
            asset = await self._upload(lease.job, media)
        if asset is None:
            await self._fail(
                lease, "upload_failed", "the result could not be stored", retryable=True
            )
            return
        result = jobs_pb2.JobResult(
            asset_id=asset.id, content_type=asset.content_type, **media.metadata()
        )
        request = jobs_pb2.CompleteJobRequest(
            job_id=lease.job.id, lease_token=lease.token, result=result
        )
        await self._complete(request, asset)

    async def _upload(self, job: jobs_pb2.Job, media: EncodedMedia) -> assets_pb2.Asset | None:
        """Stores the result; None once it cannot be. Only UNAVAILABLE is asked again: the
        upload reached no server that could have stored it, so no second asset is made."""
        try:
            return await asking_again(
                lambda: self.assets.UploadAsset(_upload_requests(job, media)),
                retry_on=(grpc.StatusCode.UNAVAILABLE,),
            )
        except grpc.aio.AioRpcError as error:
            log.warning("result_upload_failed", code=error.code().name)
            return None

    async def _complete(
        self, request: jobs_pb2.CompleteJobRequest, asset: assets_pb2.Asset
    ) -> None:
        """Completes the job, asking again while the outcome is unknown (CompleteJob is
        idempotent for one lease and one result); only a definite refusal discards the result."""
        for attempt in range(COMPLETE_ATTEMPTS):
            try:
                await self.jobs.CompleteJob(request)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in _TRANSIENT:  # canceled, or leased again: not ours now
                    reason = remote_error(error).reason
                    log.warning("complete_refused", job_id=request.job_id, reason=reason)
                    await self._discard(asset)
                    return
                await asyncio.sleep(RETRY_SECONDS * 2**attempt)
        # Unknown still: keep the result; if the job did not complete, its lease runs out and
        # it runs again, leaving this asset unreferenced rather than a paid job without one.
        log.error("complete_unconfirmed", job_id=request.job_id, asset_id=asset.id)

    async def _fail(
        self, lease: jobs_pb2.Lease, code: str, message: str, *, retryable: bool
    ) -> None:
        request = jobs_pb2.FailJobRequest(
            job_id=lease.job.id,
            lease_token=lease.token,
            error=jobs_pb2.JobError(code=code, message=message),
            retryable=retryable,
        )
        try:
            await self.jobs.FailJob(request)
        except grpc.aio.AioRpcError as error:  # the lease expires and the job is retried
            log.warning("fail_refused", job_id=lease.job.id, code=error.code().name)

    async def _discard(self, asset: assets_pb2.Asset) -> None:
        """Deletes a result no job will point at (the job was canceled or leased again)."""
        request = assets_pb2.DeleteAssetRequest(id=asset.id, account_id=asset.account_id)
        try:
            await self.assets.DeleteAsset(request)
        except grpc.aio.AioRpcError as error:
            log.warning("orphan_result_left", asset_id=asset.id, code=error.code().name)


async def asking_again(
    call: Callable[[], Awaitable[T]], *, retry_on: tuple[grpc.StatusCode, ...]
) -> T:
    """The call's answer, asked again while it fails with one of `retry_on` (assets restarting,
    a rollout): such a failure says nothing about the job, so it costs none of its attempts."""
    for attempt in range(ASSETS_ATTEMPTS - 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in retry_on:
                raise
            log.warning("assets_unreachable", code=error.code().name, attempt=attempt + 1)
        await asyncio.sleep(RETRY_SECONDS * 2**attempt)
    return await call()


def _span_attributes(job: jobs_pb2.Job) -> dict[str, str | int]:
    return {
        "magicpixels.job.mode": jobs_pb2.JobMode.Name(job.spec.mode),
        "magicpixels.job.attempt": job.attempts,
    }


async def _upload_requests(
    job: jobs_pb2.Job, media: EncodedMedia
) -> AsyncIterator[assets_pb2.UploadAssetRequest]:
    header = assets_pb2.UploadHeader(
        account_id=job.account_id,
        livemode=job.livemode,
        content_type=media.content_type,
        origin=assets_pb2.ASSET_ORIGIN_GENERATED,
        job_id=job.id,
        size_bytes=len(media.data),
    )
    yield assets_pb2.UploadAssetRequest(header=header)
    view = memoryview(media.data)
    for offset in range(0, len(view), CHUNK_BYTES):
        yield assets_pb2.UploadAssetRequest(chunk=bytes(view[offset : offset + CHUNK_BYTES]))
