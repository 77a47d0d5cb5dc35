"""Domain errors: values with a machine-readable reason, mapped once to a gRPC status.

A service raises `NotFound("JOB_NOT_FOUND", "...")`; the server interceptor turns it into the
status code of its class with a `google.rpc.ErrorInfo` carrying the reason (AIP-193), and the
gateway turns that into the API's error shape without parsing messages.
"""

from dataclasses import dataclass, field
from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "magicpixels.dev"
_DETAILS_KEY = "grpc-status-details-bin"


class SetupError(RuntimeError):
    """What an operator must put right before a process can start (a database unreachable or
    not migrated, a bucket it cannot use): the command says it in one line, no traceback."""


class DomainError(Exception):
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, reason: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.param = param

    def to_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_proto())

    def to_proto(self) -> status_pb2.Status:
        """The status with its ErrorInfo, as a message (one result of a batch carries it)."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)
        if self.param:
            info.metadata["param"] = self.param
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(DomainError):
    code = grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class RemoteError:
    """What a failed call to another service said, read back from its status details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def remote_error(error: grpc.aio.AioRpcError) -> RemoteError:
    code = error.code()
    message = error.details() or ""
    for key, value in error.trailing_metadata() or ():
        if key != _DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return RemoteError(code, status.message, info.reason, dict(info.metadata))
    return RemoteError(code, message)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def failed_call(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """What a call failing with `status` raises: one result of a batch, failed, reaches its
    caller as its own call's failure would."""
    details = grpc.aio.Metadata((_DETAILS_KEY, status.SerializeToString()))
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), details, details=status.message)


def passthrough_status(error: grpc.aio.AioRpcError) -> grpc.Status:
    """The status a service answers when a call it made failed: the callee's, details included."""
    found = remote_error(error)
    if found.reason:
        return DomainErrorOf(found).to_status()
    code = error.code()
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        code = grpc.StatusCode.UNAVAILABLE
    status = status_pb2.Status(code=code.value[0], message=found.message)
    return rpc_status.to_status(status)


class DomainErrorOf(DomainError):
    """A remote error raised again with the callee's code and reason."""

    def __init__(self, remote: RemoteError) -> None:
        super().__init__(remote.reason, remote.message, param=remote.metadata.get("param"))
        self.code = remote.code  # type: ignore[misc]


INTERNAL_ERROR = Internal("INTERNAL", "internal error")
INTERNAL_STATUS = INTERNAL_ERROR.to_status()
