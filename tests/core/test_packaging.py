"""A plain (not editable) install: the wheel holds the three source folders under the one
`magicpixels` namespace, with generated code, stubs and migrations, and it imports and runs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the tracked files, so nothing is written into the checkout."""
    source = tmp_path_factory.mktemp("source")
    tracked = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, source],
        check=True,
    )
    (built,) = out.glob("magicpixels-*.whl")
    return built


def test_wheel_puts_everything_under_magicpixels(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names if not name.startswith("magicpixels-")}
    # The SDK is its own distribution too; the server's wheel carries it for the CLI.
    assert top_level == {"magicpixels", "magicpixels_sdk"}
    for expected in (
        "magicpixels/cli.py",
        "magicpixels/core/server.py",
        "magicpixels/gateway/app.py",
        "magicpixels/services/inference/worker.py",
        "magicpixels/jobs/v1/jobs_pb2.py",
        "magicpixels/jobs/v1/jobs_pb2.pyi",
        "magicpixels/py.typed",
        "magicpixels/services/auth/migrations/env.py",
        "magicpixels/services/auth/migrations/script.py.mako",
        "magicpixels/services/auth/migrations/versions/0001_initial.py",
        "magicpixels_sdk/client.py",
    ):
        assert expected in names, expected


def test_installed_wheel_imports_and_runs(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, wheel],
        check=True,
    )
    probe = (
        "import magicpixels, magicpixels.services.jobs.server, magicpixels.gateway.app;"
        "print(magicpixels.__file__)"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    imported = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == str(target / "magicpixels" / "__init__.py")
    usage = subprocess.run(
        [sys.executable, "-m", "magicpixels.cli", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "up" in usage.stdout
    assert "serve" in usage.stdout
