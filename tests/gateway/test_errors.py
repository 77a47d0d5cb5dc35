"""Every gRPC failure maps once to the API's error shape, by its ErrorInfo reason."""

import grpc
import pytest

from magicpixels.core.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from magicpixels.gateway.errors import from_rpc_error


def rpc_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


@pytest.mark.parametrize(
    ("error", "status", "error_type", "code"),
    [
        (
            InvalidArgument("PARAMETER_INVALID", "width must be..."),
            400,
            "invalid_request_error",
            "parameter_invalid",
        ),
        (
            FailedPrecondition("INSUFFICIENT_CREDITS", "needs 1"),
            402,
            "billing_error",
            "insufficient_credits",
        ),
        (NotFound("JOB_NOT_FOUND", "no job"), 404, "not_found_error", "job_not_found"),
        (
            FailedPrecondition("JOB_NOT_CANCELABLE", "done"),
            409,
            "conflict_error",
            "job_not_cancelable",
        ),
        (
            InvalidArgument("PAYLOAD_TOO_LARGE", "big"),
            413,
            "invalid_request_error",
            "payload_too_large",
        ),
        (
            FailedPrecondition("UNSUPPORTED_MEDIA_TYPE", "gif"),
            415,
            "invalid_request_error",
            "unsupported_media_type",
        ),
        (FailedPrecondition("URL_EXPIRED", "old"), 410, "permission_error", "url_expired"),
    ],
)
def test_reason_decides_status_and_code(
    error: DomainError, status: int, error_type: str, code: str
) -> None:
    mapped = from_rpc_error(rpc_error(error.to_status()))
    assert (mapped.status, mapped.type, mapped.code, mapped.message) == (
        status,
        error_type,
        code,
        error.message,
    )


def test_param_travels_from_error_info() -> None:
    error = InvalidArgument("PARAMETER_INVALID", "bad width", param="width")
    assert from_rpc_error(rpc_error(error.to_status())).param == "width"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_unavailable_is_503_with_retry_after(code: grpc.StatusCode) -> None:
    mapped = from_rpc_error(
        grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")
    )
    assert (mapped.status, mapped.code, mapped.headers) == (
        503,
        "service_unavailable",
        {"Retry-After": "1"},
    )


def test_a_service_refusing_for_load_is_429_rate_limited_with_retry_after() -> None:
    refused = ResourceExhausted("RATE_LIMITED", "at most 10 test-mode jobs")
    mapped = from_rpc_error(rpc_error(refused.to_status()))
    assert (mapped.status, mapped.type, mapped.code, mapped.headers) == (
        429,
        "rate_limit_error",
        "rate_limited",
        {"Retry-After": "1"},
    )


def test_a_status_without_reason_is_internal_and_says_nothing_more() -> None:
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(), grpc.aio.Metadata(), "Traceback..."
    )
    mapped = from_rpc_error(raw)
    assert (mapped.status, mapped.code) == (500, "internal_error")
    assert "Traceback" not in mapped.message
