"""The CLI as a user runs it: real `magicpixels` processes against a running mesh, on a terminal
(a progress bar) and piped (plain lines)."""

import asyncio
import json
import os
import pty
import stat
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.assets.samples import encode_image
from tests.sdk.conftest import Account

MAGICPIXELS = str(Path(sys.executable).parent / "magicpixels")


def user_env(home: Path, account: Account | None = None, **extra: str) -> dict[str, str]:
    """A user's environment: their own config folder, the server, perhaps their key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGICPIXELS_", "MP_"))}
    env.update(XDG_CONFIG_HOME=str(home / "config"), HOME=str(home), **extra)
    if account is not None:
        env.update(MAGICPIXELS_API_KEY=account.token, MAGICPIXELS_BASE_URL=account.base_url)
    return env


async def run(env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Runs the command piped; answers its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        MAGICPIXELS,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    return process.returncode or 0, out.decode(), err.decode()


async def run_on_terminal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Runs the command with its stderr on a pseudo-terminal; answers what the terminal got."""
    terminal, user_side = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        MAGICPIXELS, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=user_side
    )
    os.close(user_side)
    reading = asyncio.create_task(asyncio.to_thread(_read_all, terminal))
    out, _ = await process.communicate()
    shown = await reading
    os.close(terminal)
    return process.returncode or 0, out.decode(), shown


def _read_all(terminal: int) -> str:
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the other side closed: the process ended
            break
        if not chunk:
            break
        shown += chunk
    return shown.decode(errors="replace")


async def test_generate_on_a_terminal_draws_a_progress_bar(
    account: Account, tmp_path: Path
) -> None:
    out = tmp_path / "fox.png"
    env = user_env(tmp_path, account)
    status, printed, shown = await run_on_terminal(
        env, "generate", "text_to_image", "a red fox", "-o", str(out), "--size", "64x64"
    )
    assert status == 0, shown
    assert printed.strip() == str(out)
    assert "\r" in shown
    assert "[" + "#" * 30 + "] 100% completed" in shown
    with Image.open(out) as saved:
        assert saved.size == (64, 64)


async def test_generate_piped_prints_plain_lines_for_every_mode(
    account: Account, tmp_path: Path
) -> None:
    env = user_env(tmp_path, account)
    source = tmp_path / "in.png"
    source.write_bytes(encode_image("PNG", (64, 64)))
    runs = {
        "img.png": ["text_to_image", "a boat", "--size", "64x64", "--seed", "7"],
        "restyled.webp": ["image_to_image", "in red", "--input", str(source), "--format", "webp"],
        "song.wav": ["text_to_audio", "a hum", "--duration", "1"],
        "clip.mp4": ["image_to_video", "--input", str(source), "--duration", "1", "--fps", "8"],
    }
    for name, args in runs.items():
        status, printed, lines = await run(env, "generate", *args, "-o", str(tmp_path / name))
        assert status == 0, lines
        assert printed.strip() == str(tmp_path / name)
        assert "\r" not in lines
        assert lines.splitlines()[-1].endswith(" completed 100%")
    assert (tmp_path / "restyled.webp").read_bytes()[8:12] == b"WEBP"
    assert (tmp_path / "song.wav").read_bytes()[:4] == b"RIFF"
    assert (tmp_path / "clip.mp4").read_bytes()[4:8] == b"ftyp"


async def test_login_stores_the_key_for_the_user_only_and_jobs_commands_use_it(
    account: Account, tmp_path: Path
) -> None:
    env = user_env(tmp_path)
    status, printed, errors = await run(
        env, "login", "--base-url", account.base_url, stdin=f"{account.token}\n".encode()
    )
    assert status == 0, errors
    assert "logged in as ada@example.com (100 credits)" in printed
    config = tmp_path / "config" / "magicpixels" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    stored = json.loads(config.read_text())
    assert stored == {"api_key": account.token, "base_url": account.base_url}

    status, printed, _ = await run(env, "generate", "text_to_image", "x", "--no-wait")
    job_id = json.loads(printed)["id"]
    _, listed, _ = await run(env, "jobs", "list")
    assert listed.split()[0] == job_id
    _, shown, _ = await run(env, "jobs", "get", job_id, "--wait")
    assert json.loads(shown)["status"] == "completed"
    status, _, refused = await run(env, "jobs", "cancel", job_id)
    assert status == 1
    assert "409 job_not_cancelable" in refused
    result = json.loads(shown)["result"]["asset_id"]
    status, _, _ = await run(env, "assets", "download", result, "-o", str(tmp_path / "r.png"))
    assert status == 0
    with Image.open(tmp_path / "r.png") as saved:
        assert saved.format == "PNG"

    (tmp_path / "up.png").write_bytes(encode_image("PNG", (64, 64)))
    _, uploaded, _ = await run(env, "assets", "upload", str(tmp_path / "up.png"))
    assert json.loads(uploaded)["kind"] == "image"

    # An empty answer to login keeps the stored key rather than replacing it with nothing.
    status, _, refused = await run(env, "login", stdin=b"\n")
    assert (status, refused.strip()) == (1, "magicpixels: no API key given")
    assert json.loads(config.read_text())["api_key"] == account.token


async def test_cli_mistakes_are_told_plainly(account: Account, tmp_path: Path) -> None:
    """A --param without its value is refused before any request; output piped into a reader
    that stops early (`| head`) ends the command quietly."""
    env = user_env(tmp_path, account)
    status, _, refused = await run(env, "generate", "text_to_image", "x", "--param", "steps")
    assert (status, refused.strip()) == (1, "magicpixels: --param is NAME=VALUE, not 'steps'")

    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before anything is written
    process = await asyncio.create_subprocess_exec(
        MAGICPIXELS,
        *("generate", "text_to_image", "x", "--no-wait"),
        env=env,
        stdout=writer,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(writer)
    _, errors = await process.communicate()
    assert (process.returncode, errors.decode()) == (0, "")


async def test_without_a_key_it_says_how_to_get_one(tmp_path: Path) -> None:
    status, _, errors = await run(user_env(tmp_path), "jobs", "list")
    assert status == 1
    assert "run `magicpixels login` or set MAGICPIXELS_API_KEY" in errors


async def test_generate_quote_prints_the_price_and_creates_nothing(
    account: Account, tmp_path: Path
) -> None:
    env = user_env(tmp_path, account)
    source = tmp_path / "in.png"
    source.write_bytes(encode_image("PNG", (64, 64)))

    covered = await run(env, "generate", "text_to_image", "a boat", "--size", "64x64", "--quote")
    video = ["image_to_video", "--input", str(source), "--duration", "5", "--deadline", "60"]
    short = await run(env, "generate", *video, "--quote")
    _, listed, _ = await run(env, "jobs", "list")

    assert covered == (0, "text_to_image: 1 credits; 100 available (enough)\n", "")
    assert short[:2] == (1, "image_to_video: 110 credits; 100 available (NOT enough)\n")
    assert listed == ""


@pytest.mark.without_workers
async def test_generate_with_a_deadline_shows_its_place_in_the_queue_until_canceled(
    account: Account, tmp_path: Path
) -> None:
    env = user_env(tmp_path, account)
    for _ in range(2):
        await run(env, "generate", "text_to_image", "ahead", "--size", "64x64", "--no-wait")

    status, printed, lines = await run(
        env, "generate", "text_to_image", "late", "--size", "64x64", "--deadline", "1"
    )

    assert (status, printed) == (1, "")
    shown = lines.splitlines()
    assert shown[0].endswith(" queued, 2 ahead 0%")
    assert " canceled (deadline_exceeded: " in shown[-1]
    status, _, on_terminal = await run_on_terminal(
        env, "generate", "text_to_image", "later", "--size", "64x64", "--deadline", "1"
    )
    assert status == 1
    assert "queued, 2 ahead" in on_terminal  # the job canceled by its deadline left the queue
