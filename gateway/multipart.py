"""A streaming multipart/form-data parser (RFC 7578, RFC 2046): it holds no more than one part's
headers and a boundary's length of data, however large the parts are.

`MultipartParser` is fed chunks as they arrive and returns what they completed: a `Part` when a
part's headers have been read, then the part's data as `bytes`, in pieces. `close()` checks the
body ended with its closing boundary; what follows that boundary is never read.
"""

import email.parser
import email.policy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import Message

# Bounds on what is held in memory: one part's header block, and what may precede the first part.
MAX_HEADER_BYTES = 16 * 1024
MAX_PREAMBLE_BYTES = 16 * 1024
_MAX_BOUNDARY = 70


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data; the message says where."""


@dataclass(frozen=True)
class Part:
    """A part whose headers have been read."""

    name: str | None
    content_type: str | None


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart/form-data Content-Type."""
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= _MAX_BOUNDARY:
        raise MultipartError("the Content-Type names no valid boundary")
    return boundary


class MultipartParser:
    def __init__(self, boundary: str) -> None:
        # The body is read as if it began with a line break, so the first delimiter is like
        # every other: CRLF, "--", the boundary.
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")
        self._state = self._preamble
        self.finished = False

    def feed(self, chunk: bytes) -> list[Part | bytes]:
        """The parts begun and the data read by this chunk, in order."""
        if self.finished:
            return []
        self._buffer += chunk
        events: list[Part | bytes] = []
        while self._state(events):
            pass
        return events

    def close(self) -> None:
        if not self.finished:
            raise MultipartError("the body ends before the closing boundary")

    def _preamble(self, events: list[Part | bytes]) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            if len(self._buffer) > MAX_PREAMBLE_BYTES:
                raise MultipartError("no boundary opens the body")
            return False
        del self._buffer[: found + len(self._delimiter)]
        self._state = self._after_delimiter
        return True

    def _after_delimiter(self, events: list[Part | bytes]) -> bool:
        """After a delimiter: "--" closes the body, else a line break opens a part."""
        line_end = self._buffer.find(b"\r\n")
        if self._buffer.startswith(b"--"):
            self.finished = True  # the epilogue that may follow is never read
            self._buffer.clear()
            return False
        if line_end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MultipartError("a boundary is followed by neither a line break nor '--'")
            return False
        if self._buffer[:line_end].strip(b" \t"):
            raise MultipartError("a boundary is followed by other characters")
        del self._buffer[: line_end + 2]
        self._state = self._headers
        return True

    def _headers(self, events: list[Part | bytes]) -> bool:
        if self._buffer.startswith(b"\r\n"):
            block_end = 0  # a part without headers
        else:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise MultipartError(f"a part's headers exceed {MAX_HEADER_BYTES} bytes")
                return False
            block_end = end + 2
        events.append(_part(bytes(self._buffer[:block_end])))
        del self._buffer[: block_end + 2]
        self._state = self._data
        return True

    def _data(self, events: list[Part | bytes]) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            # All but what could be the start of a delimiter is surely data.
            safe = len(self._buffer) - len(self._delimiter) + 1
            if safe > 0:
                events.append(bytes(self._buffer[:safe]))
                del self._buffer[:safe]
            return False
        if found:
            events.append(bytes(self._buffer[:found]))
        del self._buffer[: found + len(self._delimiter)]
        self._state = self._after_delimiter
        return True


def _part(block: bytes) -> Part:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    if headers.get_content_disposition() != "form-data":
        raise MultipartError("a part has no 'Content-Disposition: form-data' header")
    name = headers.get_param("name", header="content-disposition")
    return Part(name if isinstance(name, str) else None, headers.get("content-type"))


async def parse(boundary: str, body: AsyncIterator[bytes]) -> AsyncIterator[Part | bytes]:
    """The parts and data of a multipart body as it streams in."""
    parser = MultipartParser(boundary)
    async for chunk in body:
        for event in parser.feed(chunk):
            yield event
        if parser.finished:
            return
    parser.close()
