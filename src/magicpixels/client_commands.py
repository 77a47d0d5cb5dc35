"""The `magicpixels` commands of an API user, on the Python SDK: `login`, `generate`, `jobs`,
`assets`. They speak only the public HTTP API, to any MagicPixels server.

The key comes from MAGICPIXELS_API_KEY, else from the user's config file, written by `login`
(`$XDG_CONFIG_HOME/magicpixels/config.json`, mode 0600); the server from `--base-url`, else
MAGICPIXELS_BASE_URL, else the config file, else http://localhost:8080.
"""

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from magicpixels_sdk import MODES, Job, MagicPixels, MagicPixelsError, Quote
from magicpixels_sdk._http import DEFAULT_BASE_URL

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "audio/wav": "wav",
    "audio/mpeg": "mp3",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "video/mp4": "mp4",
}
_BAR_WIDTH = 30


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "magicpixels" / "config.json"


def read_config() -> dict[str, str]:
    try:
        found = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_config(values: dict[str, str]) -> Path:
    """Writes the config readable by its owner only: it holds an API key."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file may have had looser permissions
        json.dump(values, f, indent=2)
    return path


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Registers the API user's commands on the `magicpixels` parser."""
    login = _command(commands, "login", "store an API key (and server) in your config", _login)
    login.add_argument("--token", help="the API key; read from the terminal when not given")

    generate = _command(commands, "generate", "create a job, follow it, save its result", _generate)
    generate.add_argument("mode", choices=[*MODES, "audio"])
    generate.add_argument("prompt", nargs="?")
    generate.add_argument("-o", "--output", type=Path, help="where to save (<job id>.<ext>)")
    generate.add_argument("--input", help="input image: a file to upload, or an asset id")
    generate.add_argument("--audio", help="soundtrack of a video: a file or an asset id")
    generate.add_argument("--duration", type=float, help="seconds (audio, video)")
    generate.add_argument("--size", help="WIDTHxHEIGHT, e.g. 512x512")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--steps", type=int)
    generate.add_argument("--guidance", type=float, dest="guidance_scale")
    generate.add_argument("--strength", type=float, help="image_to_image: 0..1")
    generate.add_argument("--fps", type=int)
    generate.add_argument("--format", dest="output_format", help="png, jpeg, webp, wav, mp4...")
    generate.add_argument("--negative", dest="negative_prompt")
    generate.add_argument(
        "--deadline",
        type=int,
        dest="deadline_seconds",
        metavar="SECONDS",
        help="cancel (and refund) the job if it has not completed within SECONDS (1..86400)",
    )
    generate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="any other job field, e.g. --param deadline_seconds=600",
    )
    generate.add_argument("--no-wait", action="store_true", help="print the job and exit")
    generate.add_argument(
        "--quote",
        action="store_true",
        help="print the price and whether your credits cover it, and create no job (exit "
        "status 1 when they do not; an --input file is still uploaded, to be checked)",
    )

    jobs = commands.add_parser("jobs", help="list, show or cancel jobs").add_subparsers(
        required=True, metavar="ACTION"
    )
    listing = _command(jobs, "list", "your jobs, newest first", _jobs_list)
    listing.add_argument("--status")
    listing.add_argument("--mode")
    listing.add_argument("--limit", type=int, default=20, help="how many (20); 0: all")
    show = _command(jobs, "get", "one job, as JSON", _jobs_get)
    show.add_argument("job_id")
    show.add_argument("--wait", action="store_true", help="once it ended")
    cancel = _command(jobs, "cancel", "cancel a queued or running job", _jobs_cancel)
    cancel.add_argument("job_id")

    assets = commands.add_parser("assets", help="upload or download files").add_subparsers(
        required=True, metavar="ACTION"
    )
    upload = _command(assets, "upload", "upload a file; prints the asset as JSON", _upload)
    upload.add_argument("path", type=Path)
    upload.add_argument("--type", dest="content_type", help="its type, e.g. image/png")
    download = _command(assets, "download", "save an asset's content", _download)
    download.add_argument("asset_id")
    download.add_argument("-o", "--output", type=Path, required=True)


def _command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    name: str,
    help_text: str,
    action: Callable[[argparse.Namespace], None],
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--base-url", help=f"the API's address ({DEFAULT_BASE_URL})")
    parser.set_defaults(run=lambda args, _mesh: _reporting_errors(action, args), data_dir=None)
    return parser


def _reporting_errors(action: Callable[[argparse.Namespace], None], args: Any) -> None:
    try:
        action(args)
    except MagicPixelsError as error:
        raise SystemExit(f"magicpixels: {error}") from None


@contextmanager
def _client(args: argparse.Namespace, api_key: str | None = None) -> Iterator[MagicPixels]:
    config = read_config()
    key = api_key or os.environ.get("MAGICPIXELS_API_KEY") or config.get("api_key")
    if not key:
        raise SystemExit(
            "magicpixels: no API key: run `magicpixels login` or set MAGICPIXELS_API_KEY"
        )
    base_url = args.base_url or os.environ.get("MAGICPIXELS_BASE_URL") or config.get("base_url")
    with MagicPixels(key, base_url=base_url) as client:
        yield client


def _login(args: argparse.Namespace) -> None:
    token = args.token or _ask_token()
    if not token:  # else the stored key would be checked, and then replaced by nothing
        raise SystemExit("magicpixels: no API key given")
    with _client(args, api_key=token) as client:
        account = client.account.get()  # the key works before it is stored
        path = write_config({"api_key": token, "base_url": client.base_url})
    print(f"logged in as {account.email} ({account.credits.available} credits); key in {path}")


def _ask_token() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("API key: ").strip()
    return sys.stdin.readline().strip()


def _generate(args: argparse.Namespace) -> None:
    with _client(args) as client:
        params = _job_params(client, args)
        if args.quote:
            _print_quote(client.jobs.quote(args.mode, args.prompt, **params))
            return
        job = client.jobs.create(args.mode, args.prompt, **params)
        if args.no_wait:
            print(json.dumps(job.raw, indent=2))
            return
        job = _follow(client, job, sys.stderr)
        if job.status != "completed" or job.result is None:
            reason = f"{job.error.code}: {job.error.message}" if job.error else job.status
            raise SystemExit(f"magicpixels: job {job.id} {job.status} ({reason})")
        output = args.output or Path(f"{job.id}.{_EXTENSIONS.get(job.result.content_type, 'bin')}")
        client.assets.download(job.result.asset_id, output)
    print(output)


def _print_quote(quote: Quote) -> None:
    covered = "enough" if quote.sufficient else "NOT enough"
    print(
        f"{quote.mode}: {quote.cost_credits} credits; "
        f"{quote.available_credits} available ({covered})"
    )
    if not quote.sufficient:
        raise SystemExit(1)


def _job_params(client: MagicPixels, args: argparse.Namespace) -> dict[str, Any]:
    names = ("seed", "steps", "guidance_scale", "strength", "fps", "output_format")
    names += ("deadline_seconds",)
    params = {name: getattr(args, name) for name in (*names, "negative_prompt")}
    params["duration_seconds"] = args.duration
    if args.size:
        width, _, height = args.size.lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise SystemExit("magicpixels: --size is WIDTHxHEIGHT, e.g. 512x512")
        params.update(width=int(width), height=int(height))
    params["input_asset_id"] = _asset_id(client, args.input)
    params["audio_asset_id"] = _asset_id(client, args.audio)
    for pair in args.param:
        name, equals, value = pair.partition("=")
        if not (name and equals):
            raise SystemExit(f"magicpixels: --param is NAME=VALUE, not {pair!r}")
        params[name] = _json_or_text(value)
    return {name: value for name, value in params.items() if value is not None}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _asset_id(client: MagicPixels, given: str | None) -> str | None:
    """An asset id as it is; a file's path is uploaded first."""
    if given is None or (given.startswith("asset_") and not Path(given).exists()):
        return given
    return client.assets.upload(Path(given)).id


def _follow(client: MagicPixels, job: Job, out: TextIO) -> Job:
    """Follows the job's events to its end: a progress bar on a terminal, lines otherwise."""
    report = _Bar(out) if out.isatty() else _Lines(out)
    report.show(job)
    if job.done:
        return job
    for event in client.jobs.stream(job):
        job = event.job
        report.show(job)
    report.close()
    return job


def _state(job: Job) -> str:
    """The status, with how many jobs are ahead while it is queued: "queued, 3 ahead"."""
    if job.queue_position is None:
        return job.status
    return f"{job.status}, {job.queue_position} ahead"


class _Bar:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, job: Job) -> None:
        done = int(job.progress * _BAR_WIDTH)
        bar = "#" * done + "-" * (_BAR_WIDTH - done)
        self.out.write(f"\r{job.id} [{bar}] {job.progress:4.0%} {_state(job)}\x1b[K")
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


class _Lines:
    """One line per status (and queue position), and per tenth of progress: readable in a
    log."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: tuple[str, int] | None = None

    def show(self, job: Job) -> None:
        seen = (_state(job), int(job.progress * 10))
        if seen != self.last:
            self.last = seen
            print(f"{job.id} {seen[0]} {job.progress:.0%}", file=self.out, flush=True)

    def close(self) -> None:
        pass


def _jobs_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        jobs = client.jobs.list(status=args.status, mode=args.mode, page_size=100)
        for count, job in enumerate(jobs, 1):
            created = job.created_at.isoformat() if job.created_at else ""
            print(f"{job.id}  {job.mode:<14}  {job.status:<9}  {created}")
            if count == args.limit:
                break


def _jobs_get(args: argparse.Namespace) -> None:
    with _client(args) as client:
        job = client.jobs.wait(args.job_id) if args.wait else client.jobs.get(args.job_id)
    print(json.dumps(job.raw, indent=2))


def _jobs_cancel(args: argparse.Namespace) -> None:
    with _client(args) as client:
        job = client.jobs.cancel(args.job_id)
    print(f"{job.id} {job.status}")


def _upload(args: argparse.Namespace) -> None:
    with _client(args) as client:
        asset = client.assets.upload(args.path, content_type=args.content_type)
    print(json.dumps(asset.raw, indent=2))


def _download(args: argparse.Namespace) -> None:
    with _client(args) as client:
        size = client.assets.download(args.asset_id, args.output)
    print(f"{args.output} ({size} bytes)")
