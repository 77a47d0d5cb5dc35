"""Protobuf messages as the API's JSON objects (API.md)."""

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from magicpixels.auth.v1 import auth_pb2
from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.timestamps import from_timestamp, rfc3339
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


def timestamp(message: Any, field: str) -> str | None:
    if not message.HasField(field):
        return None
    value: Timestamp = getattr(message, field)
    return rfc3339(from_timestamp(value))


def optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def account(found: auth_pb2.Account, balance: billing_pb2.Balance) -> dict[str, Any]:
    return {
        "object": "account",
        "id": found.id,
        "email": found.email,
        "name": found.name or None,
        "plan": found.plan,
        "credits": {"available": balance.available, "reserved": balance.reserved},
        "created_at": timestamp(found, "create_time"),
    }


def api_key(key: auth_pb2.ApiKey, token: str | None = None) -> dict[str, Any]:
    rendered = {
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "mode": "test" if key.mode == auth_pb2.KEY_MODE_TEST else "live",
        "scopes": list(key.scopes),
        "prefix": key.prefix,
        "created_at": timestamp(key, "create_time"),
        "expires_at": timestamp(key, "expire_time"),
        "last_used_at": timestamp(key, "last_use_time"),
    }
    if token is not None:
        rendered["token"] = token
    return rendered


def job(found: jobs_pb2.Job, result_url: tuple[str, str] | None) -> dict[str, Any]:
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
        "created_at": timestamp(found, "create_time"),
        "started_at": timestamp(found, "start_time"),
        "completed_at": timestamp(found, "complete_time"),
        "result": job_result(found.result, result_url) if found.HasField("result") else None,
        "error": job_error(found),
        "attempts": found.attempts,
        "queue_position": optional(found, "queue_position"),
        "deadline_at": timestamp(found, "deadline_time"),
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
