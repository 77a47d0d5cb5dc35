"""The Dockerfile, read as text: no container engine runs where the tests do. What can be known
without building holds: a pinned base, two stages, nothing built or installed in the final
one, an unprivileged user the pods also name, `magicpixels serve` as the command, and a
context that holds what the build copies and nothing else; and the wheel the build installs
carries every migration."""

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]


def parse() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, each instruction on one logical line."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, value = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif instruction == "ARG" and not stages:
            key, _, default = value.partition("=")
            arguments[key] = default
        else:
            stages[-1].instructions.append((instruction, value.strip()))
    return arguments, stages


def base_image(stage: Stage, arguments: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda found: arguments[found.group(1)], stage.base)


def test_builds_in_stages_from_one_pinned_base() -> None:
    arguments, stages = parse()
    assert len(stages) >= 2
    bases = {base_image(stage, arguments) for stage in stages}
    assert len(bases) == 1  # the venv moves between them: one Python in both
    (base,) = bases
    image, _, tag = base.partition("@")[0].rpartition(":")
    assert image == "python"
    assert "@sha256:" in base or re.fullmatch(r"3\.\d+\.\d+-slim-\w+", tag), base
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required == ">=3.11"
    assert tuple(int(part) for part in tag.split("-")[0].split(".")[:2]) >= (3, 11)


def test_the_final_stage_builds_nothing_and_runs_unprivileged() -> None:
    _, stages = parse()
    final = stages[-1]
    runs = " ".join(final.all("RUN"))
    assert not re.search(r"\b(apt-get|apt|pip|gcc|make|cc)\b", runs), runs
    copied = final.all("COPY")
    assert copied == [f"--from={stages[0].name} /opt/magicpixels /opt/magicpixels"]
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    # Numeric (runAsNonRoot can only check a number) and no system account's.
    assert re.fullmatch(r"[1-9]\d{4,}", uid), user
    assert re.fullmatch(r"[1-9]\d{4,}", gid), user
    # Nothing after USER runs as root again.
    names = [name for name, _ in final.instructions]
    assert "RUN" not in names[names.index("USER") :]


def test_runs_magicpixels_serve_as_the_manifests_expect() -> None:
    _, stages = parse()
    final = stages[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    (command,) = final.all("CMD")
    assert yaml.safe_load(entrypoint) == ["magicpixels"]
    assert yaml.safe_load(command) == ["serve", "gateway"]
    assert "MP_DATA_DIR=/data" in " ".join(final.all("ENV"))


def test_the_pods_run_as_the_images_user() -> None:
    _, stages = parse()
    uid = int(stages[-1].all("USER")[0].partition(":")[0])
    for path in (ROOT / "k8s" / "base").glob("*.yaml"):
        for item in yaml.safe_load_all(path.read_text()):
            if item and item["kind"] == "Deployment":
                context = item["spec"]["template"]["spec"]["securityContext"]
                assert context["runAsUser"] == context["runAsGroup"] == uid, path.name
                assert item["spec"]["template"]["spec"]["containers"][0]["args"][0] == "serve"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches a path (or a folder above it) decides."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.replace("**/", ""))
            for prefix in prefixes
        ):
            ignored = not negated
    return ignored


def test_the_context_holds_what_the_build_copies_and_leaves_the_rest_out() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    _, stages = parse()
    sources = [
        word
        for stage in stages
        for value in stage.all("COPY")
        if not value.startswith("--from")
        for word in shlex.split(value)[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), source
    assert not _ignored("services/jobs/server.py", patterns)
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "node_modules/x",
        "tests/conftest.py",
        "k8s/base/kustomization.yaml",
        "src/magicpixels/__pycache__/cli.pyc",
    ):
        assert _ignored(kept_out, patterns), kept_out


@pytest.mark.timeout(300)
def test_the_context_builds_a_wheel_with_the_migrations_and_the_protos(tmp_path: Path) -> None:
    """What the build stage installs, built from a copy of the build context alone."""
    context = tmp_path / "context"
    context.mkdir()
    _, stages = parse()
    for copy in stages[0].all("COPY"):  # exactly what the build stage copies, where it copies it
        *sources, destination = shlex.split(copy)
        for source in sources:
            target = context / (source if destination.endswith("/") else destination)
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheels"),
            str(context),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("magicpixels-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for service in ("auth", "billing", "assets", "jobs"):
        folder = ROOT / "services" / service / "migrations" / "versions"
        for migration in folder.glob("*.py"):
            assert f"magicpixels/services/{service}/migrations/versions/{migration.name}" in names
        assert f"magicpixels/services/{service}/migrations/env.py" in names
    for service in ("auth", "billing", "assets", "jobs", "inference"):
        assert f"magicpixels/{service}/v1/{service}_pb2_grpc.py" in names
