"""The streaming multipart/form-data parser: whatever chunks a body arrives in, the same parts and
the same data come out, as soon as they can; malformed bodies are refused with a reason."""

import itertools
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from magicpixels.gateway.multipart import (
    MAX_HEADER_BYTES,
    MAX_PREAMBLE_BYTES,
    MultipartError,
    MultipartParser,
    Part,
    boundary_of,
    parse,
)

BOUNDARY = "b0undary-Z"
DELIMITER = b"\r\n--" + BOUNDARY.encode()
# Pieces that look like the start of a delimiter, to put the parser's look-ahead to work.
TRICKY = [b"\r", b"\n", b"-", b"--", b"\r\n--", b"b0und", b"\r\n--b0undary-", b"data", b"\0\xff"]

Parsed = list[tuple[Part, bytes]]


def _body(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    encoded = b"preamble to ignore\r\n"
    for name, content_type, data in parts:
        encoded += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n'.encode()
        if content_type:
            encoded += f"Content-Type: {content_type}\r\n".encode()
        encoded += b"\r\n" + data + b"\r\n"
    return encoded + f"--{BOUNDARY}--\r\nan epilogue to ignore".encode()


def _parse(chunks: list[bytes], boundary: str = BOUNDARY) -> Parsed:
    parser = MultipartParser(boundary)
    parsed: Parsed = []
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, Part):
                parsed.append((event, b""))
            else:
                part, data = parsed[-1]
                parsed[-1] = (part, data + event)
    parser.close()
    return parsed


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


@given(
    parts=st.lists(
        st.tuples(
            st.sampled_from(["file", "purpose", "x"]),
            st.sampled_from([None, "image/png", "audio/ogg; codecs=opus"]),
            st.lists(st.sampled_from(TRICKY), max_size=40).map(b"".join),
        ),
        max_size=4,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_any_chunking_of_a_body_gives_its_parts_back(
    parts: list[tuple[str, str | None, bytes]], cuts: list[int]
) -> None:
    assume(all(DELIMITER not in data for _, _, data in parts))
    body = _body(parts)

    parsed = _parse(_split(body, cuts))

    assert parsed == [(Part(name, content_type), data) for name, content_type, data in parts]


def test_a_body_encoded_by_httpx_parses() -> None:
    request = httpx.Request(
        "POST",
        "http://gateway/v1/assets",
        data={"purpose": "avatar"},
        files={"file": ("photo.png", b"\x89PNG\r\n--not a boundary\r\n", "image/png")},
    )

    parsed = _parse([request.read()], boundary_of(request.headers["content-type"]))

    assert parsed == [
        (Part("purpose", None), b"avatar"),
        (Part("file", "image/png"), b"\x89PNG\r\n--not a boundary\r\n"),
    ]


def test_data_comes_out_as_it_arrives_less_what_could_start_a_delimiter() -> None:
    parser = MultipartParser(BOUNDARY)
    opened = parser.feed(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"\r\n\r\n'.encode()
    )

    pieces = [parser.feed(b"x" * 100_000) for _ in range(5)]

    assert opened == [Part("file", None)]
    assert sum(len(piece) for events in pieces for piece in events) == 500_000 - len(DELIMITER) + 1


def test_transport_padding_after_a_boundary_is_allowed() -> None:
    body = (
        f'--{BOUNDARY} \t\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        f"abc\r\n--{BOUNDARY}--"
    ).encode()

    assert _parse([body]) == [(Part("file", None), b"abc")]


async def test_what_follows_the_closing_boundary_is_never_read() -> None:
    read_after_close = []

    async def body() -> AsyncIterator[bytes]:
        yield _body([("file", "image/png", b"data")])
        read_after_close.append(True)
        yield b"an endless epilogue"

    events = [event async for event in parse(BOUNDARY, body())]

    assert events == [Part("file", "image/png"), b"data"]
    assert read_after_close == []


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([_body([("file", None, b"abc")])[:-40]], "the body ends before the closing boundary"),
        ([b""], "the body ends before the closing boundary"),
        ([b"x" * (MAX_PREAMBLE_BYTES + 1)], "no boundary opens the body"),
        (
            [f"--{BOUNDARY}garbage\r\n\r\n".encode()],
            "a boundary is followed by other characters",
        ),
        (
            [f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"y" * MAX_HEADER_BYTES],
            f"a part's headers exceed {MAX_HEADER_BYTES} bytes",
        ),
        (
            [f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\nabc".encode()],
            "a part has no 'Content-Disposition: form-data' header",
        ),
        (
            [f"--{BOUNDARY}\r\n\r\nabc".encode()],
            "a part has no 'Content-Disposition: form-data' header",
        ),
    ],
)
def test_a_malformed_body_is_refused_with_its_reason(chunks: list[bytes], message: str) -> None:
    with pytest.raises(MultipartError, match=f"^{message}$"):
        _parse(chunks)


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        f"multipart/form-data; boundary={'b' * 71}",
    ],
)
def test_a_content_type_without_a_valid_boundary_is_refused(content_type: str) -> None:
    with pytest.raises(MultipartError, match="names no valid boundary"):
        boundary_of(content_type)


def test_a_quoted_boundary_is_read() -> None:
    assert boundary_of('multipart/form-data; boundary="a b:c"') == "a b:c"
