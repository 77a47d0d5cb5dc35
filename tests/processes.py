"""Running `magicpixels` commands as separate processes, as an operator or a cluster would."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import text

from magicpixels.core.db import create_engine

STOP_SECONDS = 20
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def magicpixels(
    *args: str, data_dir: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `magicpixels <args>` until the block ends (killed then, if still running).

    Its output goes to `log` when given (a pipe nobody reads would stall a long-lived process),
    else to a pipe the caller may read after it ends.
    """
    environment = {
        **os.environ,
        "MP_DATA_DIR": str(data_dir),
        "MP_LOG_FORMAT": "json",
        # Processes side by side: each `serve` takes a free metrics port unless told one.
        "MP_METRICS_PORT": "0",
        **(env or {}),
    }
    output = log.open("ab") if log else subprocess.PIPE
    process = subprocess.Popen(
        [sys.executable, "-m", "magicpixels.cli", *args],
        env=environment,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    with process:  # closes its output pipe
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if log:
                output.close()  # type: ignore[union-attr]


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    process.send_signal(signum)
    return process.wait(timeout=STOP_SECONDS)


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


async def completions(url: str, schema: str | None) -> dict[str, int]:
    """How many times each job of a jobs database was completed (a job done twice shows 2)."""
    engine = create_engine(url, schema=schema)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT job_id, count(*) FROM job_events"
                    " WHERE state = 'completed' GROUP BY job_id"
                )
            )
            return {job_id: count for job_id, count in rows}
    finally:
        await engine.dispose()
