"""Settings: documented in one table, generated secrets made once and kept private."""

import asyncio
import re
from pathlib import Path

import pytest

from magicpixels.core import settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"
CLASSES = (
    settings.MeshSettings,
    settings.AuthSettings,
    settings.BillingSettings,
    settings.AssetsSettings,
    settings.JobsSettings,
    settings.InferenceSettings,
    settings.GatewaySettings,
)


def test_every_setting_is_documented_and_nothing_else() -> None:
    names = {
        f"{cls.model_config['env_prefix']}{field.upper()}"
        for cls in CLASSES
        for field in cls.model_fields
    }
    documented = set(re.findall(r"^\| `(MP_[A-Z0-9_]+)`", DOCS.read_text(), flags=re.MULTILINE))
    assert documented == names


async def test_concurrent_first_use_creates_one_secret(tmp_path: Path) -> None:
    values = await asyncio.gather(
        *(asyncio.to_thread(settings.load_or_create_secret, tmp_path, "pepper") for _ in range(16))
    )
    assert len(set(values)) == 1
    assert len(values[0]) >= 40
    secret_file = tmp_path / "secrets" / "pepper"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in secret_file.parent.iterdir()) == ["pepper"]


def test_configured_secret_wins_over_generated(tmp_path: Path) -> None:
    configured = settings.AuthSettings(pepper="from-env").pepper
    assert settings.secret_value(configured, tmp_path, "auth_pepper") == "from-env"
    assert not (tmp_path / "secrets" / "auth_pepper").exists()


def test_a_database_url_gets_the_driver_the_services_use() -> None:
    """Managed databases hand out `postgres://` URLs; the services speak asyncpg and aiosqlite."""
    assert (
        settings.async_database_url("postgres://u:p@db:5432/mp?ssl=require")
        == "postgresql+asyncpg://u:p@db:5432/mp?ssl=require"
    )
    assert settings.async_database_url("postgresql://db/mp") == "postgresql+asyncpg://db/mp"
    assert settings.async_database_url("sqlite:////data/a.db") == "sqlite+aiosqlite:////data/a.db"
    kept = "postgresql+asyncpg://db/mp"
    assert settings.async_database_url(kept) == kept
    for refused in ("mysql://db/mp", "postgresql+psycopg2://db/mp", "db/mp"):
        with pytest.raises(ValueError, match="postgresql"):
            settings.async_database_url(refused)
