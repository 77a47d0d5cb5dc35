"""Generates the Python code and type stubs of our protos (protos/magicpixels).

python scripts/gen_protos.py            # writes into src/
python scripts/gen_protos.py --out DIR  # writes into DIR (the staleness test compares)
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# Ours; protos/google holds copies of the googleapis protos ours import, whose code comes with
# googleapis-common-protos.
OURS = PROTOS / "magicpixels"


def generate(out: Path) -> None:
    """Generates into a scratch folder, then swaps each package in: a failing protoc run
    leaves the code that was there."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in OURS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        _protoc(Path(scratch), sources)
        for proto_dir in sorted({Path(s).parent for s in sources}):
            _mark_packages(Path(scratch), proto_dir)
            shutil.rmtree(out / proto_dir, ignore_errors=True)
            shutil.copytree(Path(scratch) / proto_dir, out / proto_dir)
            _mark_packages(out, proto_dir)


def _mark_packages(root: Path, proto_dir: Path) -> None:
    for package in (root / proto_dir, *(root / proto_dir).parents):
        if package == root:
            break
        (package / "__init__.py").touch()


def _protoc(out: Path, sources: list[str]) -> None:
    plugin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "src")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
