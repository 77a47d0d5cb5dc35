"""The MCP endpoint driven by the `mcp` package's own client over streamable HTTP."""

import base64
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import mcp_types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from magicpixels.gateway import agents
from magicpixels.mesh import RunningMesh
from tests.assets.samples import encode_image
from tests.gateway.conftest import sign_up
from tests.gateway.test_jobs import funded


@asynccontextmanager
async def mcp_session(base_url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    async with http, Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as agent:
        yield agent


def structured(result: mcp_types.CallToolResult) -> Any:
    assert not result.is_error, result.content
    return result.structured_content or json.loads(result.content[0].text)  # type: ignore[union-attr]


async def test_an_agent_creates_an_image_job_and_receives_the_image(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    async with mcp_session(str(client.base_url), auth) as agent:
        tools = {tool.name for tool in (await agent.list_tools()).tools}
        assert {
            "create_text_to_image_job",
            "create_image_to_image_job",
            "create_text_to_audio_job",
            "create_image_to_video_job",
            "wait_for_job",
            "upload_asset",
            "get_job_result",
            "check_credits",
        } <= tools
        created = structured(
            await agent.call_tool(
                "create_text_to_image_job", {"prompt": "a kite", "width": 64, "height": 72}
            )
        )
        assert created["object"] == "job"
        waited = structured(await agent.call_tool("wait_for_job", {"job_id": created["id"]}))
        assert waited["status"] == "completed"
        result = await agent.call_tool("get_job_result", {"job_id": created["id"]})
        images = [block for block in result.content if isinstance(block, mcp_types.ImageContent)]
        assert len(images) == 1
        assert images[0].mime_type == "image/png"
        picture = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
        assert picture.size == (64, 72)
        credits = structured(await agent.call_tool("check_credits", {}))
        assert credits["available"] == 19


async def test_uploads_and_an_audio_result_as_a_resource_link(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    png = base64.b64encode(encode_image("PNG", (64, 64))).decode()
    async with mcp_session(str(client.base_url), auth) as agent:
        asset = structured(await agent.call_tool("upload_asset", {"base64_data": png}))
        assert (asset["kind"], asset["content_type"]) == ("image", "image/png")
        restyled = structured(
            await agent.call_tool(
                "create_image_to_image_job", {"prompt": "in red", "input_asset_id": asset["id"]}
            )
        )
        assert restyled["params"]["input_asset_id"] == asset["id"]
        job = structured(
            await agent.call_tool(
                "create_text_to_audio_job",
                {"prompt": "rain", "duration_seconds": 1, "output_format": "wav"},
            )
        )
        structured(await agent.call_tool("wait_for_job", {"job_id": job["id"]}))
        result = await agent.call_tool("get_job_result", {"job_id": job["id"]})
        links = [b for b in result.content if isinstance(b, mcp_types.ResourceLink)]
        assert links[0].mime_type == "audio/wav"
        assert re.search(
            r"expires at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", links[0].description or ""
        )
        fetched = await client.get(links[0].uri)
        assert fetched.status_code == 200
        assert fetched.content[:4] == b"RIFF"

        # A URL of a loopback address is refused, as a webhook's is.
        refused = await agent.call_tool("upload_asset", {"url": links[0].uri})
        assert refused.is_error
        assert "public" in refused.content[0].text  # type: ignore[union-attr]


async def test_tool_errors_carry_the_api_code_and_a_bad_key_is_refused(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    async with mcp_session(str(client.base_url), auth) as agent:
        failed = await agent.call_tool(
            "create_text_to_image_job", {"prompt": "x", "width": 65, "height": 64}
        )
        assert failed.is_error
        assert "parameter_invalid" in failed.content[0].text  # type: ignore[union-attr]
    answer = await client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": "Bearer mp_live_not.valid", "Accept": "application/json"},
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    missing = await client.post("/mcp", json={})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")


@pytest.fixture
def loopback_fetches_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator lets upload_asset fetch from this machine (the test's own gateway)."""
    monkeypatch.setenv("MP_GATEWAY_MCP_FETCH_ALLOWED_HOSTS", '["127.0.0.1"]')


async def test_an_upload_from_a_url_the_operator_allows(
    loopback_fetches_allowed: None, client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    uploaded = await client.post(
        "/v1/assets",
        content=encode_image("PNG", (64, 64)),
        headers={**auth, "Content-Type": "image/png"},
    )
    signed = await client.post(f"/v1/assets/{uploaded.json()['id']}/url", headers=auth)
    async with mcp_session(str(client.base_url), auth) as agent:
        copy = structured(await agent.call_tool("upload_asset", {"url": signed.json()["url"]}))
    assert copy["sha256"] == uploaded.json()["sha256"]
    assert copy["content_type"] == "image/png"


async def test_an_upload_from_a_url_needs_the_scope_before_anything_is_fetched(
    loopback_fetches_allowed: None, client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """Else any key could make the gateway download 50 MB before the API refused the upload:
    the URL here leads nowhere, so a fetch would fail otherwise than the scope does."""
    auth = await funded(client, running_mesh)
    reader = await client.post(
        "/v1/api_keys",
        json={"name": "reader", "mode": "live", "scopes": ["jobs:read"]},
        headers=auth,
    )
    reader_auth = {"Authorization": f"Bearer {reader.json()['token']}"}
    with socket.socket() as closed:  # bound, not listening
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/photo.png"
        async with mcp_session(str(client.base_url), reader_auth) as agent:
            refused = await agent.call_tool("upload_asset", {"url": url})

    assert refused.is_error
    assert "scope_missing" in refused.content[0].text  # type: ignore[union-attr]


@pytest.mark.without_workers
async def test_an_agent_quotes_sets_deadlines_and_sees_queue_positions(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    auth = await funded(client, running_mesh)
    prices = {price["mode"]: price for price in (await client.get("/v1/pricing")).json()["data"]}
    async with mcp_session(str(client.base_url), auth) as agent:
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
        audio = {"mode": "text_to_audio", "prompt": "rain", "duration_seconds": 25}
        quoted = structured(await agent.call_tool("quote_job", audio))
        unknown = await agent.call_tool("quote_job", {"mode": "sculpture", "prompt": "a"})
        credits = structured(await agent.call_tool("check_credits", {}))
        ahead = structured(
            await agent.call_tool("create_text_to_image_job", {"prompt": "a", "width": 64})
        )
        late = structured(
            await agent.call_tool(
                "create_text_to_image_job", {"prompt": "b", "deadline_seconds": 1}
            )
        )
        ended = structured(await agent.call_tool("wait_for_job", {"job_id": late["id"]}))
        queued = structured(await agent.call_tool("get_job", {"job_id": ahead["id"]}))

    assert quoted == {
        "object": "quote",
        "mode": "text_to_audio",
        "cost_credits": prices["text_to_audio"]["credits"] * 3,
        "available_credits": 20,
        "sufficient": True,
    }
    assert unknown.is_error
    assert "mode_unknown" in unknown.content[0].text  # type: ignore[union-attr]
    assert credits["available"] == 20  # quoting spent nothing
    for name in ("create_text_to_image_job", "create_image_to_video_job"):
        deadline = tools[name].input_schema["properties"]["deadline_seconds"]
        assert "deadline_exceeded" in deadline["description"]
    assert late["queue_position"] == 1
    assert late["deadline_at"] is not None
    assert (ended["status"], ended["error"]["code"]) == ("canceled", "deadline_exceeded")
    assert (queued["status"], queued["queue_position"]) == ("queued", 0)


async def test_a_get_of_the_endpoint_is_405_as_a_stateless_server_answers(
    client: httpx.AsyncClient,
) -> None:
    """The MCP transport opens a stream of the server's own on GET; one that offers none says
    405 (it once left the client waiting for headers that never came)."""
    _, token = await sign_up(client)
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}

    response = await client.get("/mcp", headers=headers, timeout=10)

    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_the_tools_describe_what_the_api_accepts(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    """Bounds, choices and defaults come from the jobs service's rules, so an agent sees each
    mode's fields as the API checks them; hints say which tools only read."""
    auth = await funded(client, running_mesh)
    async with mcp_session(str(client.base_url), auth) as agent:
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}

    image = tools["create_text_to_image_job"].input_schema
    assert image["required"] == ["prompt"]
    width = image["properties"]["width"]
    assert (width["minimum"], width["maximum"], width["multipleOf"]) == (64, 2048, 8)
    assert image["properties"]["output_format"]["enum"] == ["png", "jpeg", "webp"]
    assert "default png" in image["properties"]["output_format"]["description"]
    video = tools["create_image_to_video_job"].input_schema
    assert video["required"] == ["input_asset_id"]
    assert {"width", "negative_prompt", "steps", "metadata", "webhook_url"} <= set(
        video["properties"]
    )
    assert video["properties"]["duration_seconds"]["maximum"] == 30
    audio = tools["create_text_to_audio_job"].input_schema["properties"]
    assert (audio["duration_seconds"]["maximum"], "width" in audio) == (300, False)
    assert tools["quote_job"].input_schema["properties"]["mode"]["enum"] == [
        "text_to_image",
        "image_to_image",
        "text_to_audio",
        "image_to_video",
    ]
    hints = {name: tool.annotations for name, tool in tools.items()}
    assert all(hints[name].read_only_hint for name in ("get_job", "check_credits", "quote_job"))
    assert hints["cancel_job"].destructive_hint
    assert not hints["create_text_to_image_job"].read_only_hint


async def test_a_large_image_result_comes_as_a_preview_and_a_link(
    client: httpx.AsyncClient, running_mesh: RunningMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agents, "MAX_INLINE_IMAGE_BYTES", 100)
    monkeypatch.setattr(agents, "PREVIEW_SIDE", 32)
    auth = await funded(client, running_mesh)
    async with mcp_session(str(client.base_url), auth) as agent:
        job = structured(
            await agent.call_tool(
                "create_text_to_image_job", {"prompt": "a", "width": 128, "height": 64}
            )
        )
        structured(await agent.call_tool("wait_for_job", {"job_id": job["id"]}))
        result = await agent.call_tool("get_job_result", {"job_id": job["id"]})

    preview, link = result.content[0], result.content[1]
    assert isinstance(preview, mcp_types.ImageContent)
    assert isinstance(link, mcp_types.ResourceLink)
    assert preview.mime_type == "image/jpeg"
    assert Image.open(io.BytesIO(base64.b64decode(preview.data))).size == (32, 16)
    whole = await client.get(link.uri)
    assert Image.open(io.BytesIO(whole.content)).size == (128, 64)
