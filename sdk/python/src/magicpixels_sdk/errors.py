"""The API's errors as exceptions: one class per error `type`, each carrying the error's
`code`, `param` and `request_id`, so callers branch on what happened, not on messages."""

from collections.abc import Mapping
from typing import Any


class MagicPixelsError(Exception):
    """Anything this package raises."""


class APIConnectionError(MagicPixelsError):
    """The API could not be reached, or the connection failed before or during an answer."""


class APIError(MagicPixelsError):
    """An answer in the API's error shape (or a non-JSON failure, as `api_error`)."""

    def __init__(
        self,
        status: int,
        type: str,
        code: str,
        message: str,
        param: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.request_id = request_id
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        return f"{self.status} {self.code}: {self.message}{where} [request {self.request_id}]"


class InvalidRequestError(APIError):
    """400, 413, 415, 416: the request itself is wrong."""


class AuthenticationError(APIError):
    """401: no key, or one that is invalid, revoked or expired."""


class BillingError(APIError):
    """402: not enough credits, or no subscription."""


class PermissionDeniedError(APIError):
    """403 (and 410 of an expired signed URL): the key lacks a scope, or may not do this."""


class NotFoundError(APIError):
    """404: no such job or asset for this key."""


class ConflictError(APIError):
    """409: an idempotency key reused or in use, a job no longer cancelable."""


class RateLimitError(APIError):
    """429: too many requests; `retry_after` says when to try again."""

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        return float(value) if value and value.isdigit() else None


class ServerError(APIError):
    """5xx: the API failed or a service is briefly unavailable."""


class JobFailedError(MagicPixelsError):
    """A job the caller waited for ended `failed` or `canceled`; `code` is its error's code
    (`deadline_exceeded`: canceled by its deadline), None when it has none (canceled by a
    caller)."""

    def __init__(self, job: Any) -> None:
        error = job.error
        reason = f"{error.code}: {error.message}" if error else job.status
        super().__init__(f"job {job.id} {job.status} ({reason})")
        self.job = job
        self.code: str | None = error.code if error else None


class WaitTimeoutError(MagicPixelsError):
    """A job did not end within the time the caller would wait; `job` is how it was last seen."""

    def __init__(self, job: Any, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job


class WebhookVerificationError(MagicPixelsError):
    """A webhook whose signature or timestamp does not check out: reject it."""


_BY_TYPE: dict[str, type[APIError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "billing_error": BillingError,
    "permission_error": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "conflict_error": ConflictError,
    "rate_limit_error": RateLimitError,
    "api_error": ServerError,
}


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    410: "permission_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    416: "invalid_request_error",
    429: "rate_limit_error",
}


def error_from_response(status: int, body: Any, headers: Mapping[str, str]) -> APIError:
    """The exception of an error answer, whatever its body (a proxy's HTML page included)."""
    found = body.get("error") if isinstance(body, dict) else None
    if not isinstance(found, dict):
        error_type = _TYPE_BY_STATUS.get(status, "api_error")
        found = {"type": error_type, "code": f"http_{status}", "message": f"HTTP {status}"}
    error_type = str(found.get("type", "api_error"))
    cls = _BY_TYPE.get(error_type, ServerError if status >= 500 else APIError)
    return cls(
        status,
        error_type,
        str(found.get("code", f"http_{status}")),
        str(found.get("message", "")),
        found.get("param"),
        found.get("request_id") or headers.get("x-request-id"),
        headers,
    )
