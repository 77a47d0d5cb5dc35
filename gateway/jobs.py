"""Jobs: create one, read one."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from magicpixels.gateway import render
from magicpixels.gateway.errors import ApiError
from magicpixels.gateway.principal import Principal, require
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import gateway
from magicpixels.jobs.v1 import jobs_pb2

router = APIRouter(prefix="/v1", tags=["jobs"])

# Bounds of the wire types only; the rules of each mode live in the jobs service.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
MODES = {name: mode for mode, name in render.MODE_NAMES.items()} | {
    "audio": jobs_pb2.JOB_MODE_TEXT_TO_AUDIO
}


class JobCreate(BaseModel):
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
    mesh = gateway(request)
    url = None
    if job.state == jobs_pb2.JOB_STATE_COMPLETED:
        url = await mesh.result_url(job)
    return render.job(job, url)


@router.post("/jobs", status_code=201)
async def create_job(
    body: JobCreate,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:write"))],
) -> JSONResponse:
    """Creates a job and holds its price in credits (402 when the account cannot cover it).

    With `Idempotency-Key`, a repeat of the same body within 24 h answers the same job, as it
    is now, with `Idempotent-Replayed: true`; nothing is created or charged twice.
    """
    call = gateway(request).jobs.CreateJob(
        jobs_pb2.CreateJobRequest(
            account_id=principal.account_id,
            livemode=principal.livemode,
            spec=body.to_spec(),
            idempotency_key=request.headers.get("idempotency-key", ""),
        )
    )
    created = await call
    trailers = await call.trailing_metadata()
    replayed = trailers is not None and trailers.get("idempotent-replayed") == "true"
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(await job_json(request, created), status_code=201, headers=headers)


@router.get("/jobs/{job_id}")
async def get_job(
    job_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
) -> dict[str, Any]:
    found = await gateway(request).jobs.GetJob(
        jobs_pb2.GetJobRequest(id=job_id, account_id=principal.account_id)
    )
    return await job_json(request, found)
