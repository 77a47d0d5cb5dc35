"""The API's one error shape, and the one mapping from gRPC statuses (with ErrorInfo) to it."""

from dataclasses import dataclass, field

import grpc

from magicpixels.core.context import current_request_id
from magicpixels.core.errors import DomainError, RemoteError, remote_error
from magicpixels.gateway.responses import JSONResponse

# Seconds a client should wait before retrying when a service is unavailable.
RETRY_AFTER_SECONDS = 1

_BY_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "api_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "api_error"),
}

# Reasons whose HTTP status is more specific than their gRPC code's.
_BY_REASON: dict[str, tuple[int, str]] = {
    "INSUFFICIENT_CREDITS": (402, "billing_error"),
    "SUBSCRIPTION_REQUIRED": (402, "billing_error"),
    "JOB_NOT_CANCELABLE": (409, "conflict_error"),
    "PAYLOAD_TOO_LARGE": (413, "invalid_request_error"),
    "UNSUPPORTED_MEDIA_TYPE": (415, "invalid_request_error"),
    "CONTENT_MISMATCH": (415, "invalid_request_error"),
    "URL_EXPIRED": (410, "permission_error"),
    "RANGE_NOT_SATISFIABLE": (416, "invalid_request_error"),
}


_BEARER_CHALLENGE = 'Bearer realm="magicpixels"'


@dataclass
class ApiError(Exception):
    status: int
    type: str
    code: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        body: dict[str, object] = {"type": self.type, "code": self.code, "message": self.message}
        if self.param:
            body["param"] = self.param
        body["request_id"] = current_request_id()
        headers = self.headers
        if self.status == 401:  # RFC 6750: a refusal for want of a key says which scheme to use
            headers = {"WWW-Authenticate": _BEARER_CHALLENGE, **headers}
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


def internal_error() -> ApiError:
    return ApiError(
        500, "api_error", "internal_error", "An internal error occurred; it was logged."
    )


def from_rpc_error(error: grpc.aio.AioRpcError) -> ApiError:
    return from_remote(remote_error(error))


def from_domain_error(error: DomainError) -> ApiError:
    """An error the gateway's own plumbing raised (a service it cannot locate...)."""
    metadata = {"param": error.param} if error.param else {}
    return from_remote(RemoteError(error.code, error.message, error.reason, metadata))


def from_remote(remote: RemoteError) -> ApiError:
    if remote.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ApiError(
            503,
            "api_error",
            "service_unavailable",
            "A service is briefly unavailable; retry shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    mapped = _BY_REASON.get(remote.reason) or _BY_STATUS.get(remote.code)
    if mapped is None or not remote.reason:
        return internal_error()
    status, error_type = mapped
    param, message = _in_api_terms(remote.metadata.get("param"), remote.message)
    # API.md: a refused one gets 429 with Retry-After.
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else {}
    return ApiError(status, error_type, remote.reason.lower(), message, param, headers)


# The fields of list RPCs, as the API's list parameters name them.
_API_PARAMS = {"page_token": "starting_after", "page_size": "limit"}


def _in_api_terms(param: str | None, message: str) -> tuple[str | None, str]:
    """The field a service refused, and its message, in the names the client sent."""
    if param not in _API_PARAMS:
        return param, message
    return _API_PARAMS[param], message.replace(param, _API_PARAMS[param])
