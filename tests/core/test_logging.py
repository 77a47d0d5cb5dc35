"""Log lines are JSON off a terminal, ours and libraries' alike, and never carry a secret."""

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from magicpixels.core.logging import configure_logging

TOKEN = "mp_live_01M8A7XRW876FD4FEHDSE23DTEHKYC.4eG0ANZglDszfoCi3ffJ71vIPqqqqh9hh5DbkD8icl4"


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """JSON logging, configured once capsys owns stderr (loggers bind the stream they find)."""
    configure_logging("info", "json")
    yield
    configure_logging("warning", "console")


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.usefixtures("json_logs")
def test_secrets_are_redacted_by_key_and_by_shape(capsys: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger("t").info("signed_up", token=TOKEN, note=f"key {TOKEN} used")
    (line,) = lines(capsys.readouterr().err)
    assert line["token"] == "[redacted]"
    assert line["note"] == "key [redacted] used"
    assert TOKEN not in json.dumps(line)


@pytest.mark.usefixtures("json_logs")
def test_library_logs_share_the_format() -> None:
    (ours,) = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter)
    ]
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "bad request with %s", (TOKEN,), None
    )
    line = json.loads(ours.format(record))
    assert (line["logger"], line["level"]) == ("uvicorn.error", "error")
    assert line["event"] == "bad request with [redacted]"
