"""The contracts: buf lint passes and the generated code is what the protos generate now."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "src" / "magicpixels"


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [ROOT / "node_modules" / ".bin" / "buf", "lint"],
        cwd=ROOT / "protos",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, ROOT / "scripts" / "gen_protos.py", "--out", tmp_path], check=True
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "generation produced nothing"
    stale = [
        str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / "src" / p, shallow=False)
    ]
    assert not stale, f"run `python scripts/gen_protos.py`: stale {stale}"
    for proto_package in {p.parts[1] for p in fresh}:
        committed = {
            p.relative_to(ROOT / "src")
            for p in (GENERATED / proto_package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert committed <= set(fresh), f"files no proto generates: {committed - set(fresh)}"
