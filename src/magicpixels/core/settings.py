"""Typed settings from environment variables, one prefix per service.

Every default serves the embedded mode: SQLite files, local blobs and generated secrets under
one data folder, and an in-process event bus instead of Redis. docs/CONFIGURATION.md lists them.
"""

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("auth", "billing", "assets", "jobs", "inference")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "magicpixels"


class MeshSettings(BaseSettings):
    """What every process of the mesh shares: where data lives and how services reach each other."""

    model_config = SettingsConfigDict(env_prefix="MP_", extra="ignore")

    data_dir: Path = default_data_dir()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    # Unset: an in-process bus, which only reaches services of the same process.
    redis_url: str | None = None
    # Internal calls carry it as a bearer token; unset: generated once into the data folder.
    service_token: SecretStr | None = None
    # Unset: read from the address files that running services leave in the data folder.
    auth_address: str | None = None
    billing_address: str | None = None
    assets_address: str | None = None
    jobs_address: str | None = None
    inference_address: str | None = None
    # Deadline of an internal call that has no incoming deadline to inherit.
    rpc_timeout_seconds: float = 10.0
    # How long a stopping server lets in-flight calls finish.
    grace_seconds: float = 5.0

    def address_of(self, service: str) -> str:
        configured = getattr(self, f"{service}_address")
        return configured or read_address(self.data_dir, service)

    def internal_token(self) -> str:
        return secret_value(self.service_token, self.data_dir, "service_token")


class ServiceSettings(BaseSettings):
    """Where one service listens; subclasses set the prefix."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    # 0 takes a free port; the service records it in the data folder.
    port: int = 0


class DatabaseServiceSettings(ServiceSettings):
    """A service that owns a database."""

    # Unset: a SQLite file named after the service in the data folder.
    database_url: str | None = None
    # On PostgreSQL, the schema holding this service's tables (created when missing).
    database_schema: str | None = None

    def database_url_for(self, mesh: MeshSettings, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{mesh.data_dir / f'{service}.db'}"


class AuthSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_AUTH_", extra="ignore")

    # The HMAC key of stored API key secrets; unset: generated once into the data folder.
    pepper: SecretStr | None = None


class BillingSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_BILLING_", extra="ignore")

    # A hold left unresolved this long is released by the sweeper.
    hold_timeout_seconds: int = 7 * 24 * 3600


class AssetsSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_ASSETS_", extra="ignore")

    # Unset: a "blobs" folder in the data folder.
    blob_dir: Path | None = None
    # The HMAC key of signed URLs; unset: generated once into the data folder.
    url_signing_key: SecretStr | None = None


class JobsSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_JOBS_", extra="ignore")

    lease_seconds: float = 30.0
    max_attempts: int = 3
    # How often the reconciler looks for expired leases and unsettled holds.
    reconcile_interval_seconds: float = 1.0


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_INFERENCE_", extra="ignore")

    # Concurrent jobs this process works on.
    workers: int = 1
    # How long one LeaseJob call waits for work before asking again.
    lease_wait_seconds: float = 20.0


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MP_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # The public origin that signed URLs point at; unset: http://<host>:<port>.
    public_url: str | None = None
    # Verified API keys are served from memory this long.
    key_cache_seconds: float = 5.0
    # Lifetime of the signed result URL in a completed job.
    result_url_seconds: int = 3600

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def _secrets_dir(data_dir: Path) -> Path:
    path = data_dir / "secrets"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def load_or_create_secret(data_dir: Path, name: str) -> str:
    """Reads a generated secret, creating it on first use; safe when processes race to create it."""
    path = _secrets_dir(data_dir) / name
    if not path.exists():
        draft = path.with_name(f".{name}.{secrets.token_hex(8)}")
        draft.write_text(secrets.token_urlsafe(32))
        draft.chmod(0o600)
        try:
            os.link(draft, path)  # atomic, and refuses to replace a secret another process made
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def secret_value(configured: SecretStr | None, data_dir: Path, name: str) -> str:
    if configured is not None:
        return configured.get_secret_value()
    return load_or_create_secret(data_dir, name)


def _address_file(data_dir: Path, service: str) -> Path:
    return data_dir / "run" / f"{service}.address"


def write_address(data_dir: Path, service: str, address: str) -> None:
    path = _address_file(data_dir, service)
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_suffix(".tmp")
    draft.write_text(address)
    draft.replace(path)


def remove_address(data_dir: Path, service: str) -> None:
    _address_file(data_dir, service).unlink(missing_ok=True)


def read_address(data_dir: Path, service: str) -> str:
    path = _address_file(data_dir, service)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise LookupError(
            f"no address for the {service} service: set MP_{service.upper()}_ADDRESS or start "
            f"the mesh with the data folder {data_dir}"
        ) from None
