"""What an RPC carries on to the calls it makes: its request id and its remaining time."""

import asyncio
from contextvars import ContextVar

import structlog

from magicpixels.core.ids import new_id

REQUEST_ID_HEADER = "x-request-id"
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


def current_request_id() -> str:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return request_id if isinstance(request_id, str) else new_id("req")


def set_deadline(seconds_left: float | None) -> None:
    if seconds_left is not None:
        _deadline.set(asyncio.get_running_loop().time() + seconds_left)


def within_deadline(seconds: float) -> float:
    """`seconds`, or what is left of the incoming call's deadline when that is less."""
    inherited = time_left()
    return seconds if inherited is None else max(0.0, min(seconds, inherited))


def time_left() -> float | None:
    """Seconds until the incoming call's deadline, if there is one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - asyncio.get_running_loop().time()
