"""The OpenAI Images API on our jobs: `POST /v1/images/generations` and `/v1/images/edits`, so
the OpenAI SDK, its `base_url` pointed here and a MagicPixels key as its `api_key`, generates
images on the account's credits.

Each image is an ordinary job (text_to_image, or image_to_image for an edit), created,
charged and listed like any other; the route answers once they all ended, as OpenAI's does.
Errors keep the API's shape, which is OpenAI's (`message`, `type`, `param`, `code`) plus
`request_id`; here `param` is always present, null when no parameter is at fault.
"""

import asyncio
import base64
import hashlib
import io
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import grpc
import structlog
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from magicpixels.assets.v1 import assets_pb2
from magicpixels.core import eventloop
from magicpixels.gateway import idempotency, multipart
from magicpixels.gateway.assets import DOWNLOAD_SECONDS, AssetUpload
from magicpixels.gateway.bodies import Body
from magicpixels.gateway.errors import ApiError, from_rpc_error
from magicpixels.gateway.jobs import cancel, create, quote, settled
from magicpixels.gateway.principal import Principal, require
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import gateway
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.assets import media
from magicpixels.services.jobs.public import TERMINAL

log = structlog.get_logger("magicpixels.gateway")

# An OpenAI client waits up to 10 minutes by default; so may the jobs of one request.
FINISH_SECONDS = 600
MAX_IMAGES = 10
# The form fields of an edit other than the image: short text, held in memory, so bounded in
# size and number (the route streams the image, so the 1 MiB body limit does not hold it).
_MAX_FIELD_BYTES = 16 * 1024
_MAX_FORM_BYTES = 64 * 1024
_MAX_FIELDS = 32
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
_FORMATS = ("png", "jpeg", "webp")
# What the jobs service names when a `size` made a job of a width or height it refuses.
_SIZE_PARAMS = frozenset({"width", "height"})


class OpenAIShapedRoute(APIRoute):
    """A route whose errors, answered by the app's own handlers, always carry `param`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()

        async def shaped(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as error:
                answered = await _answer_as_the_app_does(request, error)
                return _with_param(answered)

        return shaped


async def _answer_as_the_app_does(request: Request, error: Exception) -> Response:
    handlers = request.app.exception_handlers
    for cls in type(error).__mro__:
        if cls in handlers:
            answered: Response = await handlers[cls](request, error)
            return answered
    raise error


def _with_param(response: Response) -> Response:
    body = json.loads(bytes(response.body))
    error = body["error"]
    error.setdefault("param", None)
    if error["param"] in _SIZE_PARAMS:
        error["param"] = "size"
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return JSONResponse(body, status_code=response.status_code, headers=headers)


router = APIRouter(prefix="/v1", tags=["openai compatibility"], route_class=OpenAIShapedRoute)


class _ImageOptions(BaseModel):
    """The fields OpenAI's generations and edits share; `model`, `quality`, `user`,
    `output_compression` and `partial_images` are accepted and ignored (the operator's
    configuration chooses the model), as is `background` but `transparent`."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    size: str | None = Field(default=None, examples=["1024x1024", "512x512", "auto"])
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    model: str | None = None
    quality: str | None = None
    user: str | None = None
    background: Literal["auto", "opaque", "transparent"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)


class ImageGenerationRequest(Body, _ImageOptions):
    """OpenAI's fields; `style` and `moderation` are accepted and ignored too."""

    style: str | None = None
    moderation: str | None = None


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str


@router.post("/images/generations", response_model=ImagesResponse)
async def create_images(
    body: ImageGenerationRequest,
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:write"))],
) -> JSONResponse:
    """OpenAI's image generation: `n` text_to_image jobs of the prompt, answered once they end,
    as signed URLs (`response_format: url`, an hour) or base64 (`b64_json`, the default of the
    gpt-image models)."""
    _refuse_unsupported(body)
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE,
        prompt=body.prompt,
        output_format=body.output_format or "",
        **_size(body.size),
    )
    run = await _run_jobs(request, principal, spec, body.n, _digest(body))
    return await _images(request, principal, run, _response_format(body))


@router.post(
    "/images/edits",
    response_model=ImagesResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image", "prompt"],
                        "properties": {
                            "image": {"type": "string", "format": "binary"},
                            "prompt": {"type": "string"},
                            "n": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGES},
                            "size": {"type": "string"},
                            "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                            "output_format": {"type": "string", "enum": list(_FORMATS)},
                        },
                    }
                }
            },
        }
    },
)
async def edit_images(
    request: Request, principal: Annotated[Principal, Depends(require("jobs:write"))]
) -> JSONResponse:
    """OpenAI's image edit: the `image` part is uploaded as an asset, then `n` image_to_image
    jobs restyle it after the prompt (`mask` is not supported: 400 parameter_unsupported)."""
    await _require_scope(request, "assets:write")
    fields, asset = await _read_edit_form(request, principal)
    try:
        form = ImageEditForm.model_validate(fields)
    except ValidationError as error:  # located as FastAPI locates a body's faults
        raise RequestValidationError(
            [{**fault, "loc": ("body", *fault["loc"])} for fault in error.errors()]
        ) from None
    _refuse_unsupported(form)
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE,
        prompt=form.prompt,
        input_asset_id=asset.id,
        output_format=form.output_format or "",
        **_size(form.size),
    )
    run = await _run_jobs(request, principal, spec, form.n, _digest(form))
    return await _images(request, principal, run, _response_format(form))


class ImageEditForm(_ImageOptions):
    """OpenAI's form fields beside the image; `input_fidelity` is accepted and ignored too."""

    input_fidelity: str | None = None


def _response_format(request: _ImageOptions) -> str:
    """The format asked for; else base64 for the gpt-image models, which answer only that (a
    client written for them decodes `b64_json`), and URLs for the others, as OpenAI does."""
    if request.response_format is not None:
        return request.response_format
    return "b64_json" if (request.model or "").startswith("gpt-image") else "url"


def _refuse_unsupported(request: _ImageOptions) -> None:
    if request.background == "transparent":
        message = "Transparent backgrounds are not supported; use 'auto' or 'opaque'."
        raise _invalid("parameter_unsupported", message, "background")
    if request.stream:
        message = "Streamed partial images are not supported; send stream=false."
        raise _invalid("parameter_unsupported", message, "stream")


def _digest(request: _ImageOptions) -> bytes:
    """What identifies the client's request as a whole (its `n` and `response_format` too), for
    the claims of its jobs' idempotency keys: the fields it sent (defaults left out, so a field
    this route gains later does not change the digest of a retry sent across the upgrade)."""
    sent = request.model_dump(exclude_defaults=True)
    return hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).digest()


async def _require_scope(request: Request, scope: str) -> None:
    await require(scope)(request)


def _size(size: str | None) -> dict[str, int]:
    """`WxH` as width and height (the jobs service checks their bounds); `auto` or none: the
    mode's default."""
    if size in (None, "", "auto"):
        return {}
    found = _SIZE.fullmatch(size)
    if found is None:
        raise ApiError(
            400,
            "invalid_request_error",
            "parameter_invalid",
            "size must be 'auto' or WIDTHxHEIGHT, e.g. 1024x1024",
            param="size",
        )
    return {"width": int(found.group(1)), "height": int(found.group(2))}


async def _read_edit_form(
    request: Request, principal: Principal
) -> tuple[dict[str, str], assets_pb2.Asset]:
    """The form's text fields, and its `image` part streamed into a new asset."""
    fields = _Fields()
    key = idempotency.key_of(request)
    header = assets_pb2.UploadHeader(
        account_id=principal.account_id,
        livemode=principal.livemode,
        # A retried edit uploads its image again: the same asset, so the same jobs' spec.
        idempotency_key=f"{key}#image" if key else "",
    )
    async with AssetUpload(gateway(request).assets) as upload:
        image = _ImagePart(upload, header)
        current: multipart.Part | None = None
        try:
            boundary = multipart.boundary_of(request.headers.get("content-type", ""))
            async for event in multipart.parse(boundary, request.stream()):
                if isinstance(event, multipart.Part):
                    current = _open_part(event, image, fields)
                elif current is not None and current.name in _IMAGE_PARTS:
                    await image.send(event)
                elif current is not None:
                    fields.add(current.name, event)
        except multipart.MultipartError as error:
            raise _invalid("multipart_invalid", f"The multipart body: {error}.", None) from None
        if not upload.started:
            raise _invalid("parameter_missing", "Send the image as an 'image' part.", "image")
        asset = await upload.finish()
    return fields.decoded(), asset


_IMAGE_PARTS = ("image", "image[]")
_GENERIC_TYPES = ("", "application/octet-stream")


class _ImagePart:
    """The upload of the image part, started at its first bytes: a part sent without a type
    (the OpenAI SDK sends bytes as application/octet-stream) is typed by what it holds."""

    def __init__(self, upload: AssetUpload, header: assets_pb2.UploadHeader) -> None:
        self.upload = upload
        self.header = header
        self.seen = False

    def open(self, part: multipart.Part) -> None:
        if self.seen:
            raise _invalid("parameter_invalid", "Send one image.", "image")
        self.seen = True
        self.header.content_type = (part.content_type or "").split(";")[0].strip().lower()

    async def send(self, chunk: bytes) -> None:
        if not self.upload.started:
            if self.header.content_type in _GENERIC_TYPES:
                found = media.sniff(io.BytesIO(chunk))
                self.header.content_type = found or "application/octet-stream"
            await self.upload.start(self.header)
        await self.upload.send(chunk)


def _open_part(part: multipart.Part, image: _ImagePart, fields: "_Fields") -> multipart.Part:
    if part.name == "mask":
        raise _invalid("parameter_unsupported", "Masks are not supported.", "mask")
    if part.name in _IMAGE_PARTS:
        image.open(part)
    else:
        fields.open(part.name)
    return part


class _Fields:
    """The form's parts other than the image, as bytes until the form ends: every such part
    counts against the limits, named or not, a name sent again included."""

    def __init__(self) -> None:
        self._values: dict[str, bytearray] = {}
        self._parts = 0
        self._bytes = 0

    def open(self, name: str | None) -> None:
        self._parts += 1
        if self._parts > _MAX_FIELDS:
            raise _invalid("parameter_invalid", f"At most {_MAX_FIELDS} form fields.", None)
        if name:
            self._values[name] = bytearray()  # a name sent again: its last value counts

    def add(self, name: str | None, data: bytes) -> None:
        self._bytes += len(data)
        if self._bytes > _MAX_FORM_BYTES:
            raise _invalid("parameter_invalid", "The form fields are too long together.", None)
        if not name:
            return
        value = self._values[name]
        value += data
        if len(value) > _MAX_FIELD_BYTES:
            raise _invalid("parameter_invalid", f"{name} is too long.", name)

    def decoded(self) -> dict[str, str]:
        """Each value as text, decoded whole (a character may span two chunks)."""
        return {
            name: bytes(value).decode("utf-8", "replace") for name, value in self._values.items()
        }


def _invalid(code: str, message: str, param: str | None) -> ApiError:
    return ApiError(400, "invalid_request_error", code, message, param=param)


@dataclass(frozen=True)
class _Run:
    """The ended jobs of one request, and whether they were all those of an earlier request
    with its Idempotency-Key."""

    jobs: list[jobs_pb2.Job]
    replayed: bool


async def _run_jobs(
    request: Request, principal: Principal, spec: jobs_pb2.JobSpec, n: int, digest: bytes
) -> _Run:
    """`n` jobs of the spec, each with its own seed, once they all ended; a repeated
    Idempotency-Key gives the same jobs back (`<key>#<i>` for the i-th).

    One answer for all n, as OpenAI gives, and nothing charged for images the client never
    sees: a request the credits do not cover is refused before any job is made (with a key,
    it may be the replay of jobs already paid for, so its jobs are asked for), and when a
    create is refused, the jobs made before it are canceled and their keys freed.
    """
    key = idempotency.key_of(request)
    priced = await quote(request, principal, spec)
    if not key and not _covers(priced, n):
        raise _not_covered(priced, n)
    digest = digest if key else b""
    answers = await asyncio.gather(
        *(create(request, principal, spec, f"{key}#{i}" if key else "", digest) for i in range(n)),
        return_exceptions=True,
    )
    # Each made job, and whether an earlier request with the key made it (its replay headers).
    created = [answer for answer in answers if not isinstance(answer, BaseException)]
    refused = next((answer for answer in answers if isinstance(answer, BaseException)), None)
    if refused is not None:
        # Only the jobs this request made: a replayed one is another request's to answer.
        made_here = [job for job, replayed in created if not replayed]
        await _cancel_all(request, principal, made_here, undo=True)
        raise _refusal(refused, priced, n)
    jobs = await _ended(request, principal, [job for job, _ in created], keyed=bool(key))
    return _Run(jobs, replayed=all(replayed for _, replayed in created))


def _covers(priced: jobs_pb2.QuoteJobResponse, n: int) -> bool:
    return priced.cost_credits * n <= priced.available_credits


def _not_covered(priced: jobs_pb2.QuoteJobResponse, n: int) -> ApiError:
    images = "1 image needs" if n == 1 else f"{n} images need"
    message = f"{images} {priced.cost_credits * n} credits, {priced.available_credits} available"
    return ApiError(402, "billing_error", "insufficient_credits", message)


def _refusal(refused: BaseException, priced: jobs_pb2.QuoteJobResponse, n: int) -> BaseException:
    """A create's refusal as the whole request's: credits it lacks are counted for all n."""
    if (
        isinstance(refused, grpc.aio.AioRpcError)
        and from_rpc_error(refused).code == "insufficient_credits"
        and not _covers(priced, n)
    ):
        return _not_covered(priced, n)
    return refused


async def _ended(
    request: Request, principal: Principal, jobs: list[jobs_pb2.Job], keyed: bool
) -> list[jobs_pb2.Job]:
    """The jobs once they all ended, within FINISH_SECONDS and while the client waits.

    Unended jobs of a request without a key are canceled when the client leaves, the time runs
    out, a watch fails or the request is cut (a stopping gateway's grace ended): nobody could
    get their images, so nobody pays for them. With a key, they go on: a retry with it waits
    for the same jobs.
    """
    watches = (settled(request, principal, job, FINISH_SECONDS, "end", drain=False) for job in jobs)
    latest = jobs  # as created, until the watches answer
    try:
        latest = await eventloop.unless(eventloop.all_of(watches), _client_gone(request)) or jobs
    finally:
        unended = [job for job in latest if job.state not in TERMINAL]
        if unended and not keyed:
            await asyncio.shield(_cancel_all(request, principal, unended, undo=False))
    if unended:
        raise _unfinished(unended[0], keyed)
    for job in latest:
        _raise_unless_completed(job)
    return latest


async def _client_gone(request: Request) -> None:
    """Returns when the client closes its connection (its request was read whole before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _cancel_all(
    request: Request, principal: Principal, jobs: list[jobs_pb2.Job], undo: bool
) -> None:
    """Cancels the jobs (one that ended meanwhile stays as it ended); `undo` frees the keys
    that created them too."""
    answers = await asyncio.gather(
        *(cancel(request, principal, job.id, free_idempotency_key=undo) for job in jobs),
        return_exceptions=True,
    )
    failed = [
        job.id
        for job, answer in zip(jobs, answers, strict=True)
        if isinstance(answer, Exception) and not _ended_meanwhile(answer)
    ]
    if failed:  # they go on, and are charged if they complete: an operator may cancel them
        log.warning("openai_jobs_not_canceled", job_ids=failed)


def _ended_meanwhile(refusal: Exception) -> bool:
    return (
        isinstance(refusal, grpc.aio.AioRpcError)
        and from_rpc_error(refusal).code == "job_not_cancelable"
    )


def _unfinished(job: jobs_pb2.Job, keyed: bool) -> ApiError:
    if keyed:
        message = (
            f"Job {job.id} did not finish within {FINISH_SECONDS} s; retry with the same "
            "Idempotency-Key to wait for the same jobs, or follow it at /v1/jobs."
        )
        headers = {"Retry-After": "1"}
    else:
        message = (
            f"Job {job.id} did not finish within {FINISH_SECONDS} s, so this request's jobs "
            "were canceled and nothing is charged. Send an Idempotency-Key to wait for the "
            "same jobs across retries."
        )
        # A retry would make new jobs that wait as long: the OpenAI SDK obeys this header.
        headers = {"Retry-After": "1", "x-should-retry": "false"}
    return ApiError(503, "api_error", "service_unavailable", message, headers=headers)


def _raise_unless_completed(job: jobs_pb2.Job) -> None:
    if job.state == jobs_pb2.JOB_STATE_COMPLETED:
        return
    code = job.error.code if job.HasField("error") else "job_canceled"
    message = job.error.message if job.HasField("error") else "the job was canceled"
    raise ApiError(500, "api_error", code, f"Job {job.id} did not complete: {message}")


async def _images(
    request: Request, principal: Principal, run: _Run, response_format: str
) -> JSONResponse:
    render = _as_base64 if response_format == "b64_json" else _as_url
    data = await asyncio.gather(*(render(request, principal, job) for job in run.jobs))
    first = run.jobs[0]
    return JSONResponse(
        {
            "created": int(time.time()),
            "data": list(data),
            "output_format": first.spec.output_format or "png",
            "size": f"{first.result.width}x{first.result.height}",
        },
        headers={"Idempotent-Replayed": "true"} if run.replayed else None,
    )


async def _as_url(request: Request, _principal: Principal, job: jobs_pb2.Job) -> dict[str, Any]:
    signed = await gateway(request).result_url(job)
    return {"url": signed[0] if signed else None, "revised_prompt": None}


async def _as_base64(request: Request, principal: Principal, job: jobs_pb2.Job) -> dict[str, Any]:
    stream = gateway(request).assets.ReadAsset(
        assets_pb2.ReadAssetRequest(
            id=job.result.asset_id, account_id=principal.account_id, livemode=principal.livemode
        ),
        timeout=DOWNLOAD_SECONDS,
    )
    content = bytearray()
    async for message in stream:
        if message.WhichOneof("payload") == "chunk":
            content += message.chunk
    return {"b64_json": base64.b64encode(bytes(content)).decode(), "revised_prompt": None}
