"""A job as the public API writes it (API.md), and the signed URL of its result: what the
gateway answers and webhooks carry."""

from typing import Any

import grpc
from google.protobuf.message import Message

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.core.timestamps import from_timestamp, rfc3339, rfc3339_field
from magicpixels.jobs.v1 import jobs_pb2

MODE_NAMES = {
    jobs_pb2.JOB_MODE_TEXT_TO_IMAGE: "text_to_image",
    jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE: "image_to_image",
    jobs_pb2.JOB_MODE_TEXT_TO_AUDIO: "text_to_audio",
    jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO: "image_to_video",
}
STATUS_NAMES = {
    jobs_pb2.JOB_STATE_QUEUED: "queued",
    jobs_pb2.JOB_STATE_RUNNING: "running",
    jobs_pb2.JOB_STATE_COMPLETED: "completed",
    jobs_pb2.JOB_STATE_FAILED: "failed",
    jobs_pb2.JOB_STATE_CANCELED: "canceled",
}
# The states a job ends in: nothing about it changes after them.
TERMINAL = frozenset(
    {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELED}
)
# Resolved parameters echoed under "params", in this order, when the job has them.
_PARAMS = (
    "width",
    "height",
    "seed",
    "steps",
    "guidance_scale",
    "strength",
    "duration_seconds",
    "fps",
)
_INPUTS = ("negative_prompt", "input_asset_id", "audio_asset_id", "webhook_url")


def optional(message: Message, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def job(found: jobs_pb2.Job, result_url: tuple[str, str] | None) -> dict[str, Any]:
    """The job; `result_url` is the signed URL of its result and when that expires."""
    spec = found.spec
    params = {name: getattr(spec, name) for name in _PARAMS if spec.HasField(name)}
    params["output_format"] = spec.output_format
    params.update({name: getattr(spec, name) for name in _INPUTS if getattr(spec, name)})
    return {
        "object": "job",
        "id": found.id,
        "mode": MODE_NAMES[spec.mode],
        "status": STATUS_NAMES[found.state],
        "progress": round(found.progress, 4),
        "prompt": spec.prompt or None,
        "params": params,
        "cost_credits": found.cost_credits,
        "livemode": found.livemode,
        "created_at": rfc3339_field(found, "create_time"),
        "started_at": rfc3339_field(found, "start_time"),
        "completed_at": rfc3339_field(found, "complete_time"),
        "result": job_result(found.result, result_url) if found.HasField("result") else None,
        "error": job_error(found),
        "attempts": found.attempts,
        "queue_position": optional(found, "queue_position"),
        "deadline_at": rfc3339_field(found, "deadline_time"),
        "metadata": dict(spec.metadata),
    }


def job_result(result: jobs_pb2.JobResult, url: tuple[str, str] | None) -> dict[str, Any]:
    """The result; its URL is null once the asset was deleted."""
    rendered: dict[str, Any] = {
        "asset_id": result.asset_id,
        "content_type": result.content_type,
        "url": url[0] if url else None,
        "url_expires_at": url[1] if url else None,
    }
    for name in ("width", "height", "duration_seconds"):
        if result.HasField(name):
            rendered[name] = getattr(result, name)
    return rendered


def job_error(found: jobs_pb2.Job) -> dict[str, str] | None:
    if not found.HasField("error"):
        return None
    return {"code": found.error.code, "message": found.error.message}


class ContentUrls:
    """Signed URLs of assets' content on the gateway's public origin: whoever holds one may
    download the content, without a key, until it expires."""

    def __init__(self, assets: assets_pb2_grpc.AssetsServiceStub, public_url: str) -> None:
        self._assets = assets
        self._public_url = public_url.rstrip("/")

    async def signed(
        self, asset_id: str, account_id: str, expires_in: int, livemode: bool | None = None
    ) -> tuple[str, str]:
        """The URL and when it expires; with `livemode`, only for an asset of that mode."""
        request = assets_pb2.SignUrlRequest(
            id=asset_id, account_id=account_id, expires_in_seconds=expires_in, livemode=livemode
        )
        signed = await self._assets.SignUrl(request)
        url = f"{self._public_url}/v1/assets/{asset_id}/content?{signed.query}"
        return url, rfc3339(from_timestamp(signed.expire_time))

    async def of_result(self, job: jobs_pb2.Job, expires_in: int) -> tuple[str, str] | None:
        """The URL of the job's result; None without one, or once its owner deleted the asset."""
        if not job.HasField("result"):
            return None
        try:
            return await self.signed(job.result.asset_id, job.account_id, expires_in)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
