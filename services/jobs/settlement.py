"""A job's credits: billing's two-phase hold, referenced by the job id, and its mirror on the job.

Billing's Reserve, Capture and Release are idempotent by reference, so every step here may be
repeated by the reconciler after a crash or a lost answer without charging twice.
"""

import grpc
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.errors import Unavailable, remote_error
from magicpixels.core.service import Mesh
from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import store
from magicpixels.services.jobs.domain import HoldStatus, hold_resolution, is_terminal, mode_name
from magicpixels.services.jobs.store import JobRow

# Billing may or may not have acted on a call that failed with these: the reconciler finds out.
_OUTCOME_UNKNOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

log = structlog.get_logger("magicpixels.jobs")


def usage_of(spec: jobs_pb2.JobSpec) -> billing_pb2.Usage:
    return billing_pb2.Usage(mode=mode_name(spec.mode), duration_seconds=spec.duration_seconds)


class Settlement:
    def __init__(self, engine: AsyncEngine, mesh: Mesh) -> None:
        self._engine = engine
        self._mesh = mesh

    def _billing(self) -> billing_pb2_grpc.BillingServiceStub:
        # Resolved on use: billing may start after jobs.
        return billing_pb2_grpc.BillingServiceStub(self._mesh.channel("billing"))

    async def quote(
        self, account_id: str, livemode: bool, spec: jobs_pb2.JobSpec
    ) -> billing_pb2.QuoteResponse:
        request = billing_pb2.QuoteRequest(
            account_id=account_id, usage=usage_of(spec), livemode=livemode
        )
        return await self._billing().Quote(request)

    async def hold(self, job: JobRow, spec: jobs_pb2.JobSpec) -> JobRow:
        """Holds the price of a pending job and queues it.

        A refusal fails the job and is raised as billing said it; an unknown outcome leaves the
        job pending for the reconciler.
        """
        request = billing_pb2.ReserveRequest(
            account_id=job.account_id, reference=job.id, usage=usage_of(spec), livemode=job.livemode
        )
        try:
            hold = await self._billing().Reserve(request)
        except grpc.aio.AioRpcError as error:
            if error.code() not in _OUTCOME_UNKNOWN:
                refusal = _refusal(error)
                await store.fail_pending(self._engine, job.id, refusal, HoldStatus.NONE, utcnow())
            raise
        queued = await store.mark_queued(self._engine, job.id, hold.amount, utcnow())
        if queued is None:
            await self._billing().Release(billing_pb2.ReleaseRequest(reference=job.id))
            raise Unavailable("JOB_ABANDONED", "the job took too long to create; create it again")
        return queued

    async def release_unconfirmed(self, job_id: str) -> None:
        """Releases whatever a lost Reserve of the job may have held; there may be no hold."""
        try:
            await self._billing().Release(billing_pb2.ReleaseRequest(reference=job_id))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def settle(self, job: JobRow) -> None:
        """Captures an ended job's hold when it completed, releases it otherwise.

        A failed call leaves the job marked held, which the reconciler settles later.
        """
        if job.billing != HoldStatus.HELD or not is_terminal(job.state):
            return
        resolution = hold_resolution(job.state)
        try:
            await self._resolve(job.id, resolution)
        except grpc.aio.AioRpcError as error:
            log.warning("settlement_deferred", job_id=job.id, code=error.code().name)
            return
        await store.set_billing(self._engine, job.id, resolution, utcnow())

    async def _resolve(self, job_id: str, resolution: HoldStatus) -> None:
        if resolution == HoldStatus.CAPTURED:
            await self._billing().Capture(billing_pb2.CaptureRequest(reference=job_id))
        else:
            await self._billing().Release(billing_pb2.ReleaseRequest(reference=job_id))


def _refusal(error: grpc.aio.AioRpcError) -> jobs_pb2.JobError:
    refused = remote_error(error)
    code = refused.reason or error.code().name
    return jobs_pb2.JobError(code=code.lower(), message=refused.message)
