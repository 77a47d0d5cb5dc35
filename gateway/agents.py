"""The Model Context Protocol server at `/mcp` (streamable HTTP, the official `mcp` package):
an agent with an API key creates each mode's job, waits for it, uploads inputs and reads
results, on the same account and credits as the REST API.

Each request is authenticated here with the same bearer keys as the API; each tool then calls
the public REST API itself, through the Python SDK, with the caller's own key, so its scopes,
rate limits, idempotency and errors are exactly the API's. The server is stateless (every
request stands alone), so any gateway replica answers any request.
"""

import asyncio
import base64
import contextlib
import inspect
import io
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from ipaddress import ip_address
from typing import IO, Annotated, Any

import grpc
import httpx
import mcp_types
from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from PIL import Image
from pydantic import WithJsonSchema
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from magicpixels.core.context import current_request_id
from magicpixels.core.errors import DomainError
from magicpixels.core.timestamps import rfc3339
from magicpixels.gateway.errors import ApiError, from_domain_error, from_rpc_error
from magicpixels.gateway.principal import bearer_token, require_scope
from magicpixels.gateway.state import Gateway
from magicpixels.services.jobs import domain
from magicpixels.services.jobs.domain import WebhookPolicy, webhook_target
from magicpixels_sdk import APIError, AsyncMagicPixels, JobResult, MagicPixelsError

# Inputs fetched from a URL: the largest the API accepts (audio, 50 MiB), and how long to try.
MAX_FETCH_BYTES = 50 * 1024 * 1024
FETCH_SECONDS = 60.0
# A wait_for_job call waits at most this long; an agent calls it again for longer jobs.
MAX_WAIT_SECONDS = 300
_IMAGE = "image/"
# A larger image result is sent as a preview of at most PREVIEW_SIDE pixels a side, beside a
# link to the whole file: agents' clients refuse or shrink images of a few megabytes.
MAX_INLINE_IMAGE_BYTES = 1 << 20
PREVIEW_SIDE = 1024
MCP_PATH = "/mcp"
# The scope a tool's API call will need, checked before the tool does what costs the gateway
# (upload_asset downloads up to MAX_FETCH_BYTES before its upload meets the API's check).
SCOPES_FIRST = {"upload_asset": "assets:write"}
# What the transport answers a GET (a stream the server would open) or a DELETE (a session to
# end) with: a stateless server has neither, and the MCP spec asks for a 405 then.
_POST_ONLY = ApiError(
    405,
    "invalid_request_error",
    "method_not_allowed",
    "The MCP endpoint takes POST requests.",
    headers={"Allow": "POST"},
)

INSTRUCTIONS = """MagicPixels generates images, audio and video as jobs paid with credits.
Create a job with a create_* tool, then call wait_for_job until its status is completed,
failed or canceled, then get_job_result. Inputs (images, audio) are assets: upload_asset from
a URL or base64 first and pass its id. check_credits tells what the account can spend;
quote_job what a job would cost, before creating it. A create_* tool's deadline_seconds
cancels (and refunds) a job not completed in time."""


class McpEndpoint:
    """The ASGI app of `/mcp`: a valid bearer key, then the MCP transport."""

    def __init__(self, shared: Gateway) -> None:
        self._shared = shared
        # One connection pool for every tool call's requests to the API, whatever their key.
        self.http = httpx.AsyncClient(timeout=MAX_WAIT_SECONDS + 30)
        self.server = build_server(shared, self.http)
        # Builds the server's session manager, which this endpoint serves at its own route.
        # Host and Origin checks (against DNS rebinding) are left out: they protect ambient
        # credentials, and these requests carry a bearer key, whatever host the gateway has.
        self.server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._manager = self.server.session_manager

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self._manager.run(), self.http:
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":  # stateless: no stream of the server's own to GET
            await _POST_ONLY.response()(scope, receive, send)
            return
        refused = await self._refusal(scope)
        if refused is not None:
            await refused.response()(scope, receive, send)
            return
        await self._manager.handle_request(scope, receive, send)

    async def _refusal(self, scope: Scope) -> ApiError | None:
        """Why the request's key may not use the tools; None when it may."""
        try:
            await self._shared.principal(bearer_token(Request(scope)))
        except ApiError as error:
            return error
        except DomainError as error:
            return from_domain_error(error)
        except grpc.aio.AioRpcError as error:
            return from_rpc_error(error)
        return None


def build_server(shared: Gateway, http: httpx.AsyncClient) -> MCPServer:
    with _logging_left_alone():
        server = MCPServer(name="magicpixels", instructions=INSTRUCTIONS, version="1")
    for tool in TOOLS:
        server.add_tool(_as_tool(shared, http, tool), annotations=_annotations(tool.__name__))
    return server


# What a tool does to the account, for the agent's client to decide what to confirm.
_READS = frozenset({"quote_job", "wait_for_job", "get_job", "get_job_result", "check_credits"})


def _annotations(name: str) -> mcp_types.ToolAnnotations:
    if name in _READS:
        return mcp_types.ToolAnnotations(readOnlyHint=True, openWorldHint=False)
    if name == "cancel_job":  # a second cancel changes nothing more
        return mcp_types.ToolAnnotations(destructiveHint=True, idempotentHint=True)
    # Creates spend credits or store files; upload_asset may fetch from the open web.
    return mcp_types.ToolAnnotations(
        destructiveHint=False, idempotentHint=False, openWorldHint=name == "upload_asset"
    )


@contextlib.contextmanager
def _logging_left_alone() -> Iterator[None]:
    """MCPServer configures the root logger (logging.basicConfig) when it has no handler yet;
    this process's logging is magicpixels.core.logging's to configure."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _as_tool(
    shared: Gateway, http: httpx.AsyncClient, tool: Callable[..., Awaitable[Any]]
) -> Callable[..., Any]:
    """The tool with an API client of the caller's key, and the API's errors as tool errors
    the agent reads (code, message, param)."""

    async def call(ctx: Context, **arguments: Any) -> Any:
        scope = SCOPES_FIRST.get(tool.__name__)
        if scope is not None:
            try:
                require_scope(await shared.principal(_token(ctx)), scope)
            except ApiError as refused:  # told as the API's own refusals are (below)
                raise ToolError(str(_as_sdk_error(refused))) from None
        async with _client(shared, http, ctx) as client:
            try:
                return await tool(client, shared, **arguments)
            except MagicPixelsError as error:  # the API's code, message, param, request id
                raise ToolError(str(error)) from None

    # What MCPServer reads to describe the tool: its own parameters (after the client and
    # the gateway), and the context it injects.
    signature = inspect.signature(tool)
    parameters = list(signature.parameters.values())[2:]
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    call.__name__ = tool.__name__
    call.__doc__ = tool.__doc__
    call.__signature__ = signature.replace(parameters=[*parameters, context])  # type: ignore[attr-defined]
    call.__annotations__ = {
        **{p.name: p.annotation for p in parameters},
        "ctx": Context,
        "return": signature.return_annotation,
    }
    return call


@contextlib.asynccontextmanager
async def _client(
    shared: Gateway, http: httpx.AsyncClient, ctx: Context
) -> AsyncIterator[AsyncMagicPixels]:
    url = _loopback_url(shared)
    async with AsyncMagicPixels(
        _token(ctx), base_url=url, max_retries=1, http_client=http
    ) as client:
        yield client


def _as_sdk_error(error: ApiError) -> APIError:
    return APIError(
        error.status, error.type, error.code, error.message, error.param, current_request_id()
    )


def _token(ctx: Context) -> str:
    """The caller's bearer token (the endpoint let in only a valid one)."""
    headers = ctx.headers or {}
    return (headers.get("authorization") or "").partition(" ")[2].strip()


def _loopback_url(shared: Gateway) -> str:
    """This gateway's own listening address, as its tools reach the API."""
    host = shared.settings.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{shared.settings.port}"


# What each field of a create means to an agent; its type, bounds, choices and default come
# from the jobs service's rules (domain.mode_schema), so a tool describes what the API accepts.
FIELD_NOTES = {
    "prompt": "what to make",
    "negative_prompt": "what to keep out of it",
    "input_asset_id": "an image asset of the account (upload_asset makes one)",
    "audio_asset_id": (
        "an audio asset of the account, muxed as the soundtrack; without duration_seconds the "
        "video lasts as long as the audio"
    ),
    "width": "pixels (by default the input image's, where the mode takes one)",
    "height": "pixels (by default the input image's, where the mode takes one)",
    "seed": "the same seed and inputs give the same output; random when absent",
    "steps": "diffusion steps",
    "guidance_scale": "how closely to follow the prompt",
    "strength": "how far to move from the input image: 0 not at all, 1 entirely",
    "duration_seconds": (
        "the length in seconds; a video with a soundtrack lasts as long as it by default, else 4 s"
    ),
    "fps": "frames per second",
    "output_format": "the file format of the result",
    "webhook_url": "an https URL the job's events are POSTed to, signed with the account's secret",
    "metadata": "string pairs kept with the job and echoed back",
    "deadline_seconds": (
        "if the job has not completed this many seconds after its creation it is canceled, "
        "its error code is deadline_exceeded, and its credits are released"
    ),
}
CREATE_DOCS = {
    "text_to_image": "Creates a text_to_image job (1 credit): an image of the prompt.",
    "image_to_image": (
        "Creates an image_to_image job (1 credit): the input image asset restyled after the prompt."
    ),
    "text_to_audio": (
        "Creates a text_to_audio job (1 credit per started 10 s): a piece after the prompt."
    ),
    "image_to_video": (
        "Creates an image_to_video job (22 credits per started second): the input image asset "
        "animated (camera words in the prompt: zoom, left, right, up, down, still), with an "
        "optional audio asset as its soundtrack."
    ),
}


def create_tool(mode: str) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The `create_<mode>_job` tool, whose parameters are the fields of the mode."""

    async def create(client: AsyncMagicPixels, _shared: Gateway, **fields: Any) -> dict[str, Any]:
        prompt = fields.pop("prompt", None)
        return (await client.jobs.create(mode, prompt, **_given(**fields))).raw

    schema = domain.mode_schema(mode)
    fixed = list(inspect.signature(create).parameters.values())[:2]
    described = [
        _parameter(name, field, name in schema["required"])
        for name, field in schema["properties"].items()
    ]
    create.__name__ = f"create_{mode}_job"
    create.__doc__ = CREATE_DOCS[mode]
    create.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*fixed, *described], return_annotation=dict[str, Any]
    )
    return create


def _parameter(name: str, schema: dict[str, Any], required: bool) -> inspect.Parameter:
    """A tool parameter described by its JSON Schema. An optional one defaults to null (the
    API then fills its default, which the description names)."""
    schema = dict(schema)
    note = FIELD_NOTES[name]
    if "default" in schema:
        note = f"{note}; default {schema.pop('default')}"
    annotation = Annotated[Any, WithJsonSchema({**schema, "description": note})]
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=inspect.Parameter.empty if required else None,
    )


# Described for the agent, and checked by the API, whose errors say more than a schema's.
Mode = Annotated[str, WithJsonSchema({"type": "string", "enum": list(domain.MODES)})]
WaitSeconds = Annotated[
    int, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_WAIT_SECONDS})
]


async def quote_job(
    client: AsyncMagicPixels,
    _shared: Gateway,
    mode: Mode,
    prompt: str | None = None,
    input_asset_id: str | None = None,
    audio_asset_id: str | None = None,
    duration_seconds: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> dict[str, Any]:
    """What a job would cost before creating it: mode (text_to_image, image_to_image,
    text_to_audio, image_to_video) and the arguments its create_* tool would get; answers
    cost_credits, available_credits and sufficient (whether the credits cover it). Checked
    as a create is (the same errors), but creates nothing and spends nothing."""
    params = _given(
        input_asset_id=input_asset_id,
        audio_asset_id=audio_asset_id,
        duration_seconds=duration_seconds,
        width=width,
        height=height,
    )
    return (await client.jobs.quote(mode, prompt, **params)).raw


async def wait_for_job(
    client: AsyncMagicPixels,
    _shared: Gateway,
    job_id: str,
    timeout_seconds: WaitSeconds = 60,
) -> dict[str, Any]:
    """Waits until the job ends (completed, failed, canceled) or timeout_seconds (at most
    300) pass, and answers the job as it is then."""
    seconds = max(1, min(timeout_seconds, MAX_WAIT_SECONDS))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            return (await client.jobs.wait(job_id)).raw
    return (await client.jobs.get(job_id)).raw


async def get_job(client: AsyncMagicPixels, _shared: Gateway, job_id: str) -> dict[str, Any]:
    """The job: status, progress, queue_position (jobs ahead of it while queued, 0: next),
    deadline_at, result or error (code deadline_exceeded: canceled by its deadline)."""
    return (await client.jobs.get(job_id)).raw


async def cancel_job(client: AsyncMagicPixels, _shared: Gateway, job_id: str) -> dict[str, Any]:
    """Cancels a queued or running job; its credits are released."""
    return (await client.jobs.cancel(job_id)).raw


async def get_job_result(
    client: AsyncMagicPixels, _shared: Gateway, job_id: str
) -> list[mcp_types.ContentBlock]:
    """A completed job's result: an image as image content (a large one as a preview, with a
    link to the whole file); audio and video as a link to a signed URL (valid an hour) of the
    file."""
    job = await client.jobs.get(job_id)
    if job.result is None:
        raise ToolError(f"job {job.id} is {job.status}, with no result (yet)")
    result = job.result
    summary = mcp_types.TextContent(
        text=f"job {job.id} {job.mode}: asset {result.asset_id} ({result.content_type})"
    )
    if not result.content_type.startswith(_IMAGE):
        return [await _link(client, job.id, result), summary]
    data = await client.assets.content(result.asset_id)
    if len(data) <= MAX_INLINE_IMAGE_BYTES:
        return [_image(data, result.content_type), summary]
    preview = await asyncio.to_thread(_preview, data)
    link = await _link(client, job.id, result)
    return [_image(preview, "image/jpeg"), link, summary]


def _image(data: bytes, content_type: str) -> mcp_types.ImageContent:
    return mcp_types.ImageContent(data=base64.b64encode(data).decode(), mime_type=content_type)


def _preview(data: bytes) -> bytes:
    """The image scaled to fit PREVIEW_SIDE, as a JPEG."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGBA")
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    small = Image.alpha_composite(Image.new("RGBA", small.size, "white"), small).convert("RGB")
    out = io.BytesIO()
    small.save(out, "JPEG", quality=85)
    return out.getvalue()


async def _link(client: AsyncMagicPixels, job_id: str, result: JobResult) -> mcp_types.ResourceLink:
    signed = await client.assets.url(result.asset_id)
    return mcp_types.ResourceLink(
        uri=signed.url,
        name=result.asset_id,
        mime_type=result.content_type,
        description=f"the result of {job_id}; the link expires at {rfc3339(signed.expires_at)}",
    )


async def upload_asset(
    client: AsyncMagicPixels,
    shared: Gateway,
    url: str | None = None,
    base64_data: str | None = None,
    content_type: str | None = None,
) -> dict[str, Any]:
    """Uploads an input (PNG, JPEG, WebP image; WAV, MP3, FLAC, OGG audio) from a public URL
    or from base64 data, and answers the asset, whose id the create_* tools take."""
    if (url is None) == (base64_data is None):
        raise ToolError("give either url or base64_data")
    if base64_data is not None:
        try:
            data = base64.b64decode(base64_data, validate=True)
        except ValueError:
            raise ToolError("base64_data is not base64") from None
        return (await client.assets.upload(data, content_type=content_type)).raw
    assert url is not None
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
        fetched_type = await _fetch(shared, url, spool)
        spool.seek(0)
        kind = content_type or fetched_type
        return (await client.assets.upload(spool, content_type=kind)).raw  # type: ignore[arg-type]


async def check_credits(client: AsyncMagicPixels, _shared: Gateway) -> dict[str, Any]:
    """The account's plan and credits: available to spend, and reserved by running jobs."""
    account = await client.account.get()
    return {
        "plan": account.plan,
        "available": account.credits.available,
        "reserved": account.credits.reserved,
    }


TOOLS = (
    *(create_tool(mode) for mode in domain.RULES),
    quote_job,
    wait_for_job,
    get_job,
    cancel_job,
    get_job_result,
    upload_asset,
    check_credits,
)


def _given(**params: Any) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


async def _fetch(shared: Gateway, url: str, into: IO[bytes]) -> str | None:
    """Downloads a URL as webhooks reach theirs: https to a public address (the operator's
    MP_GATEWAY_MCP_FETCH_ALLOWED_HOSTS may allow others), connecting to the address that was
    checked, at most MAX_FETCH_BYTES. Answers the Content-Type it was served with."""
    policy = WebhookPolicy.allowing(shared.settings.mcp_fetch_allowed_hosts)
    target = webhook_target(url)
    if target is None or (target.scheme == "http" and not policy.allow_listed(target.host)):
        raise ToolError("url must be an https URL of a public host")
    address = await _reachable(policy, target.host, target.port)
    request_url = httpx.URL(url)
    async with (
        httpx.AsyncClient(timeout=FETCH_SECONDS) as http,
        http.stream(
            "GET",
            request_url.copy_with(host=address),
            headers={"host": request_url.netloc.decode()},
            extensions={"sni_hostname": target.host},
        ) as response,
    ):
        if response.status_code != 200:
            raise ToolError(f"fetching the url answered HTTP {response.status_code}")
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_FETCH_BYTES:
                raise ToolError(f"the file at url is larger than {MAX_FETCH_BYTES} bytes")
            into.write(chunk)
        content_type = response.headers.get("content-type")
    return content_type.split(";")[0].strip() if content_type else None


async def _reachable(policy: WebhookPolicy, host: str, port: int) -> str:
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(host, port, type=0, proto=6)
    except OSError:
        raise ToolError(f"the host {host} was not found") from None
    for *_, sockaddr in found:
        address = ip_address(sockaddr[0])
        if policy.may_reach(host, address):
            return str(address)
    raise ToolError("url must point at a public address")


def mount(app: FastAPI, shared: Gateway) -> McpEndpoint:
    """Serves the MCP endpoint at /mcp (its `running()` belongs in the app's lifespan)."""
    endpoint = McpEndpoint(shared)
    app.router.routes.append(Route(MCP_PATH, endpoint, methods=["GET", "POST", "DELETE"]))
    return endpoint
