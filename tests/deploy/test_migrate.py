"""`magicpixels migrate`, the production Job's command, and services that leave migrating to it
(MP_<SERVICE>_MIGRATE_ON_START=false) and so refuse a database it has not brought up to date."""

import asyncio
from pathlib import Path

import pytest

from magicpixels import cli
from magicpixels.core import settings as config
from magicpixels.core.bus import LocalBus
from magicpixels.core.service import Mesh
from magicpixels.mesh import SERVICE_CLASSES, build_service
from tests.support import Database


def _environment(monkeypatch: pytest.MonkeyPatch, database: Database, data_dir: Path) -> None:
    """Every database service configured as a pod of the migration Job would be."""
    monkeypatch.setenv("MP_DATA_DIR", str(data_dir))
    for name in config.DATABASE_SERVICES:
        prefix = f"MP_{name.upper()}"
        if database.schema is None:
            monkeypatch.setenv(
                f"{prefix}_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir}/{name}.db"
            )
        else:
            monkeypatch.setenv(f"{prefix}_DATABASE_URL", database.url)
            monkeypatch.setenv(f"{prefix}_DATABASE_SCHEMA", f"{database.schema}_{name}")
        monkeypatch.setenv(f"{prefix}_MIGRATE_ON_START", "false")


async def _start_and_close(name: str, data_dir: Path) -> None:
    mesh = Mesh(config.MeshSettings(data_dir=data_dir), LocalBus())
    service = build_service(name, mesh, SERVICE_CLASSES[name][1]())
    try:
        await service.start()
    finally:
        await service.close()
        await mesh.close()


async def test_a_service_refuses_an_unmigrated_database_until_migrate_ran(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, database, tmp_path)
    with pytest.raises(RuntimeError, match=r"run `magicpixels migrate billing` first"):
        await _start_and_close("billing", tmp_path)

    await asyncio.to_thread(cli.main, ["migrate", "billing"])

    await _start_and_close("billing", tmp_path)
    with pytest.raises(RuntimeError, match="magicpixels migrate jobs"):  # only billing migrated
        await _start_and_close("jobs", tmp_path)


async def test_migrate_without_names_migrates_every_database_service_and_is_repeatable(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _environment(monkeypatch, database, tmp_path)
    for _ in range(2):
        await asyncio.to_thread(cli.main, ["migrate"])
    printed = capsys.readouterr().out.split("\n")
    assert printed.count("migrated auth") == 2
    for name in config.DATABASE_SERVICES:
        await _start_and_close(name, tmp_path)


def test_migrate_refuses_a_service_without_a_database() -> None:
    with pytest.raises(SystemExit, match="no database service inference"):
        cli.main(["migrate", "inference"])
