"""A job's credits: billing's two-phase hold, referenced by the job id, and its mirror on the job.

Billing's Reserve, Capture and Release are idempotent by reference, so every step here may be
repeated by the reconciler after a crash or a lost answer without charging twice.
"""

import asyncio

import grpc
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.context import set_deadline
from magicpixels.core.errors import Unavailable, remote_error
from magicpixels.core.holds import Holds
from magicpixels.core.service import Mesh
from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import store
from magicpixels.services.jobs.domain import (
    HoldStatus,
    State,
    hold_resolution,
    is_terminal,
    mode_name,
    resolved_elsewhere,
)
from magicpixels.services.jobs.store import JobRow

# Billing may or may not have acted on a call that failed with these: the reconciler finds out.
# UNAVAILABLE includes the mesh not knowing billing's address yet.
_OUTCOME_UNKNOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
# The most a billing call may take, within the deadline of the RPC it serves if any: a hung
# billing holds up neither a reconciler pass nor a settlement for longer.
CALL_TIMEOUT_SECONDS = 5.0

log = structlog.get_logger("magicpixels.jobs")


def usage_of(spec: jobs_pb2.JobSpec) -> billing_pb2.Usage:
    return billing_pb2.Usage(mode=mode_name(spec.mode), duration_seconds=spec.duration_seconds)


class Settlement:
    def __init__(self, engine: AsyncEngine, mesh: Mesh) -> None:
        self._engine = engine
        self._mesh = mesh
        self._in_background: set[asyncio.Task[None]] = set()
        # Reserves and resolutions made at once (creates, jobs ending) go to billing together.
        self._holds = Holds(self._billing, seconds=CALL_TIMEOUT_SECONDS)

    def _billing(self) -> billing_pb2_grpc.BillingServiceStub:
        # Resolved on use: billing may start after jobs.
        return self._mesh.stub("billing", billing_pb2_grpc.BillingServiceStub)

    async def quote(
        self, account_id: str, livemode: bool, spec: jobs_pb2.JobSpec
    ) -> billing_pb2.QuoteResponse:
        request = billing_pb2.QuoteRequest(
            account_id=account_id, usage=usage_of(spec), livemode=livemode
        )
        return await self._billing().Quote(request, timeout=CALL_TIMEOUT_SECONDS)

    async def hold(self, job: JobRow, spec: jobs_pb2.JobSpec) -> store.Queued:
        """Holds the price of a pending job and queues it: the job and its queue position (None
        when a replay of its create queued it first).

        A refusal fails the job and is raised as billing said it; an unknown outcome leaves the
        job pending for the reconciler.
        """
        request = billing_pb2.ReserveRequest(
            account_id=job.account_id, reference=job.id, usage=usage_of(spec), livemode=job.livemode
        )
        try:
            hold = await self._holds.reserve(request)
        except grpc.aio.AioRpcError as error:
            if error.code() not in _OUTCOME_UNKNOWN:
                await store.fail_pending(self._engine, job.id, _refusal(error), utcnow())
            raise
        queued = await store.mark_queued(self._engine, job, hold.amount, utcnow())
        if queued is None:
            current = await store.get_job(self._engine, job.id)
            if current is not None and current.state != State.FAILED:
                # A replay of its create resumed it first, with the same hold.
                return store.Queued(current, None)
            await self._give_back(job.id)
            raise Unavailable("JOB_ABANDONED", "the job took too long to create; create it again")
        return queued

    async def _give_back(self, abandoned_id: str) -> None:
        """Releases the hold this Reserve made for a job the reconciler abandoned meanwhile.

        The reconciler released before this hold existed, so the job is marked held again and
        settled: released now, or by the reconciler if billing does not answer.
        """
        abandoned = await store.set_billing(self._engine, abandoned_id, HoldStatus.HELD, utcnow())
        await self.settle(abandoned)

    def settle_soon(self, job: JobRow) -> None:
        """Settles an ended job's hold in the background, so that the call that ended the job
        is answered without waiting for billing; the reconciler settles what this misses."""
        if _unsettled(job):
            task = asyncio.create_task(self._settle_in_background(job))
            self._in_background.add(task)
            task.add_done_callback(self._in_background.discard)

    async def _settle_in_background(self, job: JobRow) -> None:
        # The RPC that ended the job has been answered: its deadline is not this call's.
        set_deadline(CALL_TIMEOUT_SECONDS)
        try:
            await self.settle(job)
        except Exception:  # the reconciler settles it on its next pass
            log.exception("settlement_failed", job_id=job.id)

    async def close(self) -> None:
        """Stops the settlements in flight: their jobs stay marked held for the reconciler."""
        for task in self._in_background:
            task.cancel()
        await asyncio.gather(*self._in_background, return_exceptions=True)

    async def settle(self, job: JobRow) -> None:
        """Captures an ended job's hold when it completed, releases it otherwise.

        A call whose outcome is unknown leaves the job marked held, which the reconciler
        settles later.
        """
        if not _unsettled(job):
            return
        settled = await self._resolve(job.id, hold_resolution(job.state))
        if settled is not None:
            await store.set_billing(self._engine, job.id, settled, utcnow())

    async def _resolve(self, job_id: str, wanted: HoldStatus) -> HoldStatus | None:
        """Asks billing to resolve the hold as `wanted`: where the hold then stands, None when
        billing's answer was lost."""
        try:
            await self._call_resolve(job_id, wanted)
        except Unavailable:  # the mesh does not know billing's address yet
            _defer(job_id, grpc.StatusCode.UNAVAILABLE)
            return None
        except grpc.aio.AioRpcError as error:
            if error.code() not in _OUTCOME_UNKNOWN:
                return _standing_after(error, job_id, wanted)
            _defer(job_id, error.code())
            return None
        return wanted

    async def _call_resolve(self, job_id: str, wanted: HoldStatus) -> None:
        if wanted == HoldStatus.CAPTURED:
            await self._holds.capture(billing_pb2.CaptureRequest(reference=job_id))
        else:
            await self._holds.release(billing_pb2.ReleaseRequest(reference=job_id))


def _unsettled(job: JobRow) -> bool:
    return job.billing == HoldStatus.HELD and is_terminal(job.state)


def _defer(job_id: str, code: grpc.StatusCode) -> None:
    log.warning("settlement_deferred", job_id=job_id, code=code.name)


def _standing_after(error: grpc.aio.AioRpcError, job_id: str, wanted: HoldStatus) -> HoldStatus:
    """Where the hold stands after billing refused to resolve it as `wanted` because nothing is
    left to resolve: it was resolved the other way (billing's sweeper expires forgotten holds)
    or, for a release, never made. Any other refusal is raised."""
    reason = remote_error(error).reason
    if reason == "HOLD_ALREADY_RESOLVED":
        standing = resolved_elsewhere(wanted)
    elif reason == "HOLD_NOT_FOUND" and wanted == HoldStatus.RELEASED:
        standing = HoldStatus.RELEASED
    else:
        raise error
    log.warning("hold_resolved_elsewhere", job_id=job_id, wanted=wanted, billing=standing)
    return standing


def _refusal(error: grpc.aio.AioRpcError) -> jobs_pb2.JobError:
    refused = remote_error(error)
    code = refused.reason or error.code().name
    return jobs_pb2.JobError(code=code.lower(), message=refused.message)
