"""The served OpenAPI document: the checked-in one, valid, every route of the contract with its
errors, and the answers of the running gateway match its schemas."""

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from openapi_spec_validator import validate

from magicpixels.mesh import RunningMesh
from tests.gateway.conftest import API_EXAMPLE
from tests.gateway.test_jobs import funded

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
# The routes of API.md (as "METHOD path") that this gateway serves.
CONTRACT = (
    "POST /v1/accounts",
    "GET /v1/account",
    "POST /v1/api_keys",
    "GET /v1/api_keys",
    "DELETE /v1/api_keys/{key_id}",
    "GET /v1/credits/ledger",
    "GET /v1/plans",
    "POST /v1/subscription",
    "GET /v1/pricing",
    "POST /v1/assets",
    "GET /v1/assets",
    "GET /v1/assets/{asset_id}",
    "DELETE /v1/assets/{asset_id}",
    "GET /v1/assets/{asset_id}/content",
    "POST /v1/assets/{asset_id}/url",
    "POST /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/events",
    "GET /v1/jobs",
    "POST /v1/jobs/{job_id}/cancel",
    "POST /mcp",
    "POST /v1/images/generations",
    "GET /healthz",
    "GET /readyz",
)


async def served(client: httpx.AsyncClient) -> Any:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    return answer.json()


async def test_the_served_document_is_the_checked_in_one(client: httpx.AsyncClient) -> None:
    document = await served(client)
    assert document == json.loads(CHECKED_IN.read_text()), (
        "docs/openapi.json is stale: run `.venv/bin/python scripts/gen_openapi.py`"
    )
    validate(document)


async def test_every_route_with_its_errors_and_the_docs_page(
    client: httpx.AsyncClient,
) -> None:
    document = await served(client)
    routes = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert set(CONTRACT) <= routes
    for route in routes - {"GET /healthz", "GET /readyz"}:
        method, path = route.split(" ")
        responses = document["paths"][path][method.lower()]["responses"]
        assert {"400", "429", "500", "503"} <= set(responses), route
        assert "422" not in responses, route
    jobs = document["paths"]["/v1/jobs"]["post"]
    assert {"401", "402", "403", "409"} <= set(jobs["responses"])
    assert jobs["requestBody"]["content"]["application/json"]["example"] == API_EXAMPLE
    assert document["paths"]["/v1/accounts"]["post"]["security"] == []
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "/openapi.json" in page.text
    # Swagger UI comes from the gateway itself: the page renders with no internet.
    assert "cdn" not in page.text.lower()
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in page.text
        served_asset = await client.get(asset)
        assert served_asset.status_code == 200
        assert len(served_asset.content) > 100_000


def conforms(document: Any, name: str, instance: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    jsonschema.validate(instance, schema)


async def test_answers_match_the_documented_schemas(
    client: httpx.AsyncClient, running_mesh: RunningMesh
) -> None:
    document = await served(client)
    auth = await funded(client, running_mesh)
    job = await client.post("/v1/jobs", json=API_EXAMPLE, headers={**auth, "Prefer": "wait=30"})
    conforms(document, "Job", job.json())
    account = await client.get("/v1/account", headers=auth)
    conforms(document, "Account", account.json())
    listed = await client.get("/v1/jobs", headers=auth)
    conforms(document, "List", listed.json())
    for item in listed.json()["data"]:
        conforms(document, "Job", item)
    refused = await client.post("/v1/jobs", json={**API_EXAMPLE, "width": 1}, headers=auth)
    assert refused.status_code == 400
    conforms(document, "Error", refused.json())
    conforms(document, "Error", (await client.get("/v1/jobs/job_x")).json())
