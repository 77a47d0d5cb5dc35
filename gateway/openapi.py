"""The served OpenAPI document: what FastAPI derives from the routes, completed with what it
cannot see: the objects the routes answer, the one error shape and the errors each route may
answer, bearer authentication, the headers on every response, the contract's examples, and
the MCP endpoint.

`docs/openapi.json` is this document, checked in (`python scripts/gen_openapi.py` writes it);
a test fails when the served one differs.
"""

import copy
import re
import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from magicpixels.gateway.agents import MCP_PATH
from magicpixels.services.auth.domain import SCOPES

Schema = dict[str, Any]

_TIME = {"type": "string", "format": "date-time", "example": "2026-11-24T06:19:12.123Z"}
_NULLABLE_TIME = {"anyOf": [_TIME, {"type": "null"}]}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(name: str, properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    """An API object: `object` is its type name; every property but `optional` is present."""
    return {
        "type": "object",
        "properties": {"object": {"type": "string", "const": name}, **properties},
        "required": ["object", *(p for p in properties if p not in optional)],
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_STR, _INT, _NUM, _BOOL = ({"type": t} for t in ("string", "integer", "number", "boolean"))
_NULL_STR, _NULL_INT, _NULL_NUM = (_nullable(s) for s in (_STR, _INT, _NUM))

JOB_EXAMPLE = {
    "object": "job",
    "id": "job_01JDQ3Z8T6X4C2V9N5M7K1H3G0",
    "mode": "text_to_image",
    "status": "queued",
    "progress": 0.0,
    "prompt": "Editorial product photo on brushed steel",
    "params": {"width": 1024, "height": 1024, "seed": 123, "output_format": "png"},
    "cost_credits": 1,
    "livemode": True,
    "created_at": "2026-11-24T06:19:12.123Z",
    "started_at": None,
    "completed_at": None,
    "result": None,
    "error": None,
    "attempts": 0,
    "queue_position": 3,
    "deadline_at": None,
    "metadata": {},
}
QUOTE_EXAMPLE = {
    "object": "quote",
    "mode": "text_to_image",
    "cost_credits": 1,
    "available_credits": 20,
    "sufficient": True,
}
ERROR_EXAMPLE = {
    "error": {
        "type": "invalid_request_error",
        "code": "parameter_invalid",
        "message": "width must be a multiple of 8 between 64 and 2048",
        "param": "width",
        "request_id": "req_01JDQ3Z8T6X4C2V9N5M7K1H3G0",
    }
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error, whatever produced it, has this shape and no other.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "type": {
                        "type": "string",
                        "enum": [
                            "invalid_request_error",
                            "authentication_error",
                            "billing_error",
                            "permission_error",
                            "not_found_error",
                            "conflict_error",
                            "rate_limit_error",
                            "api_error",
                        ],
                    },
                    "code": {"type": "string", "example": "parameter_invalid"},
                    "message": _STR,
                    "param": {"type": "string", "description": "the parameter at fault"},
                    "request_id": {"type": "string", "example": "req_01JDQ3Z8T6X4C2V9N5M7K1H3G0"},
                },
                "required": ["type", "code", "message", "request_id"],
            }
        },
        "required": ["error"],
        "example": ERROR_EXAMPLE,
    },
    "List": {
        "type": "object",
        "description": "A page of a list, newest first; `next_cursor` is the next page's "
        "`starting_after`.",
        "properties": {
            "object": {"type": "string", "const": "list"},
            "data": {"type": "array", "items": {"type": "object"}},
            "has_more": _BOOL,
            "next_cursor": _NULL_STR,
        },
        "required": ["object", "data", "has_more", "next_cursor"],
    },
    "Credits": {
        "type": "object",
        "properties": {"available": _INT, "reserved": _INT},
        "required": ["available", "reserved"],
    },
    "Account": _object(
        "account",
        {
            "id": {"type": "string", "example": "acct_01JDQ3Z8T6X4C2V9N5M7K1H3G0"},
            "email": {"type": "string", "format": "email"},
            "name": _NULL_STR,
            "plan": _STR,
            "credits": _ref("Credits"),
            "created_at": _TIME,
        },
    ),
    "ApiKey": _object(
        "api_key",
        {
            "id": {"type": "string", "example": "key_01JDQ3Z8T6X4C2V9N5M7K1H3G0"},
            "name": _STR,
            "mode": {"type": "string", "enum": ["live", "test"]},
            "scopes": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
            "prefix": {"type": "string", "example": "mp_live_01JDQ3Z8T6X4C2..."},
            "token": {"type": "string", "description": "only in the answer that created it"},
            "created_at": _TIME,
            "expires_at": _NULLABLE_TIME,
            "last_used_at": _NULLABLE_TIME,
            "revoked_at": _NULLABLE_TIME,
        },
        optional=("token",),
    ),
    "SignUp": {
        "type": "object",
        "properties": {
            "account": _ref("Account"),
            "api_key": _ref("ApiKey"),
            "webhook_secret": {"type": "string", "example": "whsec_..."},
        },
        "required": ["account", "api_key", "webhook_secret"],
    },
    "WebhookSecret": _object(
        "webhook_secret", {"secret": _STR, "previous_secret_expires_at": _NULLABLE_TIME}
    ),
    "Price": _object(
        "price",
        {
            "id": _STR,
            "mode": _STR,
            "aliases": {"type": "array", "items": _STR},
            "credits": _INT,
            "unit": {"type": "string", "enum": ["job", "second"]},
            "unit_block": _INT,
            "description": _STR,
        },
    ),
    "Plan": _object(
        "plan",
        {
            "id": _STR,
            "name": _STR,
            "credits_per_period": _INT,
            "period_days": _INT,
            "price_cents": _INT,
            "currency": _STR,
        },
    ),
    "Subscription": _object(
        "subscription",
        {
            "id": _STR,
            "plan": _STR,
            "status": {"type": "string", "enum": ["pending", "active", "canceled"]},
            "current_period_start": _NULLABLE_TIME,
            "current_period_end": _NULLABLE_TIME,
            "cancel_at_period_end": _BOOL,
            "canceled_at": _NULLABLE_TIME,
            "ended_at": _NULLABLE_TIME,
            "created_at": _TIME,
        },
    ),
    "LedgerEntry": _object(
        "ledger_entry",
        {
            "id": {"type": "string", "example": "ledg_01JDQ3Z8T6X4C2V9N5M7K1H3G0"},
            "type": {
                "type": "string",
                "example": "capture",
                "description": "grant, subscription_refill, hold, capture, release, expiry, "
                "adjustment",
            },
            "amount": _INT,
            "balance_after": _INT,
            "job_id": _NULL_STR,
            "description": _STR,
            "created_at": _TIME,
        },
    ),
    "JobResult": {
        "type": "object",
        "properties": {
            "asset_id": _STR,
            "content_type": _STR,
            "url": {**_NULL_STR, "description": "a signed URL of the result; null once deleted"},
            "url_expires_at": _NULLABLE_TIME,
            "width": _INT,
            "height": _INT,
            "duration_seconds": _NUM,
        },
        "required": ["asset_id", "content_type", "url", "url_expires_at"],
    },
    "JobError": {
        "type": "object",
        "properties": {"code": _STR, "message": _STR},
        "required": ["code", "message"],
    },
    "Job": {
        **_object(
            "job",
            {
                "id": _STR,
                "mode": {
                    "type": "string",
                    "enum": ["text_to_image", "image_to_image", "text_to_audio", "image_to_video"],
                },
                "status": {
                    "type": "string",
                    "enum": ["queued", "running", "completed", "failed", "canceled"],
                },
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "prompt": _NULL_STR,
                "params": {"type": "object", "description": "every resolved parameter"},
                "cost_credits": _INT,
                "livemode": _BOOL,
                "created_at": _TIME,
                "started_at": _NULLABLE_TIME,
                "completed_at": _NULLABLE_TIME,
                "result": _nullable(_ref("JobResult")),
                "error": _nullable(_ref("JobError")),
                "attempts": _INT,
                "queue_position": {
                    **_NULL_INT,
                    "description": "jobs ahead of it in its queue while queued (0: next); "
                    "null once it left the queue",
                },
                "deadline_at": {
                    **_NULLABLE_TIME,
                    "description": "created_at + deadline_seconds: not completed by then, the "
                    "job is canceled with error code deadline_exceeded and refunded",
                },
                "metadata": {"type": "object", "additionalProperties": _STR},
            },
        ),
        "example": JOB_EXAMPLE,
    },
    "Quote": {
        **_object(
            "quote",
            {
                "mode": {
                    "type": "string",
                    "enum": ["text_to_image", "image_to_image", "text_to_audio", "image_to_video"],
                },
                "cost_credits": {**_INT, "description": "what the job would hold and charge"},
                "available_credits": {**_INT, "description": "the account's credits now"},
                "sufficient": {**_BOOL, "description": "cost_credits <= available_credits"},
            },
        ),
        "description": "The price of a job, before it is created; a quote creates, holds and "
        "charges nothing.",
        "example": QUOTE_EXAMPLE,
    },
    "Asset": _object(
        "asset",
        {
            "id": {"type": "string", "example": "asset_01JDQ3Z8T6X4C2V9N5M7K1H3G0"},
            "kind": {"type": "string", "enum": ["image", "audio", "video"]},
            "content_type": _STR,
            "size_bytes": _INT,
            "sha256": _STR,
            "width": _INT,
            "height": _INT,
            "duration_seconds": _NUM,
            "origin": {"type": "string", "enum": ["upload", "generated"]},
            "job_id": _STR,
            "livemode": _BOOL,
            "created_at": _TIME,
        },
        optional=("width", "height", "duration_seconds", "job_id"),
    ),
    "DeletedAsset": _object("asset", {"id": _STR, "deleted": {"type": "boolean", "const": True}}),
    "SignedUrl": {
        "type": "object",
        "properties": {"url": _STR, "expires_at": _TIME},
        "required": ["url", "expires_at"],
    },
}


def _list_of(name: str) -> Schema:
    return {
        "allOf": [
            _ref("List"),
            {"type": "object", "properties": {"data": {"type": "array", "items": _ref(name)}}},
        ]
    }


# What each route answers when it succeeds, by "METHOD path".
ANSWERS: dict[str, Schema] = {
    "POST /v1/accounts": _ref("SignUp"),
    "GET /v1/account": _ref("Account"),
    "POST /v1/account/webhook_secret/rotate": _ref("WebhookSecret"),
    "POST /v1/api_keys": _ref("ApiKey"),
    "GET /v1/api_keys": _list_of("ApiKey"),
    "DELETE /v1/api_keys/{key_id}": _ref("ApiKey"),
    "GET /v1/pricing": _list_of("Price"),
    "GET /v1/plans": _list_of("Plan"),
    "GET /v1/credits/ledger": _list_of("LedgerEntry"),
    "GET /v1/subscription": _ref("Subscription"),
    "POST /v1/subscription": _ref("Subscription"),
    "POST /v1/subscription/cancel": _ref("Subscription"),
    "POST /v1/jobs": _ref("Job"),
    "POST /v1/jobs/quote": _ref("Quote"),
    "GET /v1/jobs": _list_of("Job"),
    "GET /v1/jobs/{job_id}": _ref("Job"),
    "POST /v1/jobs/{job_id}/cancel": _ref("Job"),
    "POST /v1/assets": _ref("Asset"),
    "GET /v1/assets": _list_of("Asset"),
    "GET /v1/assets/{asset_id}": _ref("Asset"),
    "DELETE /v1/assets/{asset_id}": _ref("DeletedAsset"),
    "POST /v1/assets/{asset_id}/url": _ref("SignedUrl"),
}

# The errors of API.md's table: status -> (description, typical codes).
ERRORS: dict[str, tuple[str, str]] = {
    "400": ("The request is invalid", "parameter_missing, parameter_invalid, json_invalid"),
    "401": ("No valid API key", "api_key_missing, api_key_invalid, api_key_revoked"),
    "402": ("Not enough credits", "insufficient_credits, subscription_required"),
    "403": ("The key may not do this", "scope_missing, test_key_not_allowed"),
    "404": ("No such resource for this key", "job_not_found, asset_not_found"),
    "409": ("A conflict", "idempotency_key_reused, idempotency_key_in_use, job_not_cancelable"),
    "410": ("A signed URL that expired", "url_expired"),
    "413": ("The body is too large", "payload_too_large"),
    "415": ("Not a supported file, or not what it claims", "unsupported_media_type"),
    "416": ("A byte range past the end", "range_not_satisfiable"),
    "429": ("Too many requests: retry after Retry-After seconds", "rate_limited"),
    "500": ("An internal error (logged, never shown)", "internal_error"),
    "503": ("A service is briefly unavailable: retry after Retry-After", "service_unavailable"),
}
_EVERY_ROUTE = ("400", "429", "500", "503")
_AUTHENTICATED = ("401", "403")
_PUBLIC = frozenset({"POST /v1/accounts", "GET /v1/pricing", "GET /v1/plans"})
_OPERATIONS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_EXTRA_ERRORS: dict[str, tuple[str, ...]] = {
    "POST /v1/accounts": ("409",),
    "POST /v1/jobs": ("402", "404", "409"),
    "POST /v1/jobs/quote": ("404",),
    "POST /v1/images/generations": ("402", "409"),
    "POST /v1/images/edits": ("402", "409", "413", "415"),
    "POST /v1/api_keys": ("409",),
    "POST /v1/assets": ("409", "413", "415"),
    "GET /v1/assets/{asset_id}/content": ("404", "410", "416"),
    "HEAD /v1/assets/{asset_id}/content": ("404", "410", "416"),
    "POST /v1/jobs/{job_id}/cancel": ("404", "409"),
    "GET /v1/subscription": ("404",),
}
_RETRY_AFTER = {"description": "seconds to wait", "schema": {"type": "integer"}}
HEADERS: dict[str, Schema] = {
    "X-Request-Id": {
        "description": "the client's own (<= 128 printable characters) or a generated req_ id",
        "schema": {"type": "string"},
    },
    "RateLimit-Limit": {"description": "requests per window", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "left in this window", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "seconds until it refills", "schema": {"type": "integer"}},
}


def install(app: FastAPI) -> None:
    """Serves `document(app)` at /openapi.json (and /docs), built once."""

    def served() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = served  # type: ignore[method-assign]


def document(app: FastAPI) -> dict[str, Any]:
    with warnings.catch_warnings():  # GET and HEAD share one function; ids are set below
        warnings.filterwarnings("ignore", message="Duplicate Operation ID")
        found = get_openapi(
            title=app.title,
            version=app.version,
            description=DESCRIPTION,
            routes=app.routes,
            tags=app.openapi_tags,
        )
    components = found.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)  # FastAPI's 422: this API answers 400 instead
    schemas.pop("ValidationError", None)
    schemas.update(copy.deepcopy(SCHEMAS))
    # The create's (and the quote's) body, derived from JobCreate, says what a deadline does.
    schemas["JobCreate"]["properties"]["deadline_seconds"]["description"] = DEADLINE_DESCRIPTION
    components["securitySchemes"] = {"bearer": BEARER}
    components["headers"] = HEADERS
    components["responses"] = {status: _error_response(status) for status in ERRORS}
    found["security"] = [{"bearer": []}]
    found["paths"][MCP_PATH] = MCP
    for path, operations in found["paths"].items():
        # A route of several methods keeps them in a set: sorted, the document is stable.
        found["paths"][path] = operations = dict(sorted(operations.items()))
        for method, operation in operations.items():
            _complete(f"{method.upper()} {path}", operation)
    _add_examples(found["paths"])
    return found


def _complete(route: str, operation: Schema) -> None:
    method, path = route.split(" ", 1)
    operation["operationId"] = _operation_id(method, path)
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    if path in _OPERATIONS:
        operation["security"] = []
        return
    success = next((status for status in responses if status.startswith("2")), None)
    if success and route in ANSWERS:
        responses[success]["content"] = {"application/json": {"schema": ANSWERS[route]}}
    for answer in responses.values():
        answer.setdefault("headers", {}).update(
            {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS}
        )
    errors = list(_EVERY_ROUTE) + list(_EXTRA_ERRORS.get(route, ()))
    if "requestBody" in operation:  # over the gateway's body limit, or its file's
        errors.append("413")
    if route in _PUBLIC:
        operation["security"] = []
    else:
        errors += _AUTHENTICATED
        if "{" in path:
            errors.append("404")
    if path.endswith("/content"):  # the owner's key, or a signed URL with none
        operation["security"] = [{"bearer": []}, {}]
    for status in sorted(set(errors)):
        responses[status] = {"$ref": f"#/components/responses/{status}"}


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
    return f"{method.lower()}_{words}"


def _error_response(status: str) -> Schema:
    description, codes = ERRORS[status]
    response: Schema = {
        "description": f"{description} (codes: {codes})",
        "content": {"application/json": {"schema": _ref("Error")}},
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS},
    }
    if status in ("429", "503"):
        response["headers"]["Retry-After"] = _RETRY_AFTER
    return response


def _add_examples(paths: dict[str, Any]) -> None:
    """The contract's own examples: its job request, and the job it answers."""
    create = paths["/v1/jobs"]["post"]
    body = create["requestBody"]["content"]["application/json"]
    body["example"] = {
        "mode": "text_to_image",
        "prompt": "Editorial product photo on brushed steel",
    }
    quote = paths["/v1/jobs/quote"]["post"]
    quote["requestBody"]["content"]["application/json"]["example"] = body["example"]
    quote["responses"]["200"]["content"]["application/json"]["example"] = QUOTE_EXAMPLE
    for path in IDEMPOTENT_CREATES:
        paths[path]["post"].setdefault("parameters", []).append(IDEMPOTENCY_KEY)
    create["parameters"] += [
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": "wait=N (0..60): answer when the job ends (200) or after N s (201).",
            "schema": {"type": "string", "example": "wait=30"},
        },
    ]
    create["responses"]["200"] = {
        "description": "With `Prefer: wait`, the job that ended in time",
        "content": {"application/json": {"schema": _ref("Job")}},
    }
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    events["content"] = {
        "text/event-stream": {
            "schema": {"type": "string"},
            "example": 'event: status\ndata: {"object":"job","status":"running",...}\n\n',
        }
    }


# The creates that take an Idempotency-Key (a quote or a cancel changes nothing twice anyway).
IDEMPOTENT_CREATES = (
    "/v1/accounts",
    "/v1/api_keys",
    "/v1/assets",
    "/v1/jobs",
    "/v1/images/generations",
    "/v1/images/edits",
)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same key, account (for a signup: email) and body (for an upload: bytes, "
    "type and mode) within 24 h: the first "
    "answer is replayed (Idempotent-Replayed: true), nothing is created or charged twice.",
    "schema": {"type": "string", "maxLength": 255},
}

DEADLINE_DESCRIPTION = (
    "1..86400: a job not completed this many seconds after it was created is canceled "
    "(queued or running), its error code is deadline_exceeded and its hold is released"
)

DESCRIPTION = """Generation jobs (text to image, image to image, text to audio, image to
video), input and result assets, and the credits that pay for them.

Authenticate with `Authorization: Bearer mp_live_...` (or `mp_test_...`: the deterministic
built-in backend, free). Every error has the `Error` shape; every response carries
`X-Request-Id` and the `RateLimit-*` headers. Lists take `limit` (1..100) and
`starting_after`, newest first. Webhooks are signed as Standard Webhooks says.

Agents: `/mcp` is a Model Context Protocol server (streamable HTTP, the same bearer keys);
`/v1/images/generations` and `/v1/images/edits` answer as the OpenAI Images API does."""

BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key: mp_live_<key id>.<secret> or mp_test_<key id>.<secret>.",
}

MCP = {
    "post": {
        "tags": ["agents"],
        "summary": "Model Context Protocol (streamable HTTP)",
        "description": "JSON-RPC messages of the Model Context Protocol, stateless. Tools: "
        "create_text_to_image_job, create_image_to_image_job, create_text_to_audio_job, "
        "create_image_to_video_job (each with deadline_seconds), quote_job, wait_for_job, "
        "get_job, cancel_job, get_job_result (images as image content, audio and video as "
        "resource links), upload_asset (from a URL or base64), check_credits. Each acts with "
        "the caller's key and its scopes.",
        "operationId": "post_mcp",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object"},
                    "example": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                }
            },
        },
        "responses": {
            "200": {
                "description": "The JSON-RPC answer",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }
}
