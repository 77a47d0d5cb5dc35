"""A built wheel holds the three source folders under the one `magicpixels` namespace, with
the generated code, type stubs and migrations, and no top-level `services` or `gateway`."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_everything_under_magicpixels(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, ROOT],
        check=True,
    )
    (wheel,) = tmp_path.glob("magicpixels-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names if not name.startswith("magicpixels-")}
    assert top_level == {"magicpixels"}
    for expected in (
        "magicpixels/cli.py",
        "magicpixels/core/server.py",
        "magicpixels/gateway/app.py",
        "magicpixels/services/jobs/__init__.py",
        "magicpixels/services/inference/worker.py",
        "magicpixels/jobs/v1/jobs_pb2.py",
        "magicpixels/jobs/v1/jobs_pb2.pyi",
        "magicpixels/py.typed",
        "magicpixels/services/auth/migrations/env.py",
        "magicpixels/services/auth/migrations/script.py.mako",
        "magicpixels/services/auth/migrations/versions/0001_initial.py",
    ):
        assert expected in names, expected
