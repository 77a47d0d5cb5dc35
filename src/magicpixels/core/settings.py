"""Typed settings from environment variables, one prefix per service.

Every default serves the embedded mode: SQLite files, local blobs and generated secrets under
one data folder, and an in-process event bus instead of Redis. docs/CONFIGURATION.md lists them.
"""

import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("auth", "billing", "assets", "jobs", "inference")
# The services that own a database (and so migrations).
DATABASE_SERVICES = ("auth", "billing", "assets", "jobs")


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
    # The Prometheus port of a `magicpixels serve` process (other than the gateway's, which
    # serves /metrics on its own port), on the service's host; 0 takes a free port.
    metrics_port: int = 9464

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


# The drivers the services connect with, by database; a URL without one (`postgres://`, as
# managed databases hand them out) gets its database's.
_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}


def async_database_url(url: str) -> str:
    """The URL with the driver the services use (and libpq's `sslmode` as asyncpg's `ssl`,
    which takes the same values); a ValueError naming what to write instead for a database or
    driver they cannot use."""
    scheme, separator, rest = url.partition("://")
    rest = re.sub(r"([?&])sslmode=", r"\1ssl=", rest)
    database, _, driver = scheme.lower().partition("+")
    database = "postgresql" if database == "postgres" else database
    expected = _ASYNC_DRIVERS.get(database)
    if not separator or expected is None:
        raise ValueError("a database URL starts postgresql:// (or postgres://) or sqlite://")
    if driver not in ("", expected):
        raise ValueError(f"{database} URLs use the {expected} driver: {database}+{expected}://")
    return f"{database}+{expected}://{rest}"


class DatabaseServiceSettings(ServiceSettings):
    """A service that owns a database."""

    # Unset: a SQLite file named after the service in the data folder.
    database_url: str | None = None
    # On PostgreSQL, the schema holding this service's tables (created when missing).
    database_schema: str | None = None
    # Off: the service refuses to start on a database that `magicpixels migrate` has not brought
    # to its newest revision, so replicas never race to migrate (a Job does it before rollout).
    migrate_on_start: bool = True

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str | None) -> str | None:
        return async_database_url(url) if url else None  # empty: the SQLite default

    def database_url_for(self, mesh: MeshSettings, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{mesh.data_dir / f'{service}.db'}"


class AuthSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_AUTH_", extra="ignore")

    # The HMAC key of stored API key secrets (pepper version 1); unset: generated once into the
    # data folder.
    pepper: SecretStr | None = None
    # Later pepper versions, JSON {"2": "..."}: a key verifies under the version it was made with.
    peppers: dict[int, SecretStr] = {}
    # The version new keys are hashed with (and older ones rehashed to); unset: the highest.
    pepper_version: int | None = None
    # How often the times keys were last used are written, in one statement.
    last_used_flush_seconds: float = 5.0

    @field_validator("peppers")
    @classmethod
    def _later_versions_only(cls, peppers: dict[int, SecretStr]) -> dict[int, SecretStr]:
        if any(version < 2 for version in peppers):
            raise ValueError("MP_AUTH_PEPPERS names versions 2 and up; version 1 is MP_AUTH_PEPPER")
        return peppers


class PlanSettings(BaseModel):
    """One plan of MP_BILLING_PLANS: the credits it refills each period, for a price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    name: str = Field(min_length=1, max_length=100)
    credits_per_period: int = Field(ge=0)
    period_days: int = Field(ge=1, le=366)
    price_cents: int = Field(ge=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")


DEFAULT_PLANS = (
    PlanSettings(id="free", name="Free", credits_per_period=0, period_days=30, price_cents=0),
    PlanSettings(
        id="starter", name="Starter", credits_per_period=500, period_days=30, price_cents=900
    ),
    PlanSettings(id="pro", name="Pro", credits_per_period=2500, period_days=30, price_cents=3900),
)


class BillingSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_BILLING_", extra="ignore")

    # A hold left unresolved this long is released by the sweeper.
    hold_timeout_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    # The plans on offer, as a JSON list of PlanSettings.
    plans: tuple[PlanSettings, ...] = DEFAULT_PLANS
    # Approve paid subscriptions at once instead of waiting for the operator's
    # `magicpixels admin approve-subscription`: for development (`magicpixels up`).
    auto_approve_subscriptions: bool = False
    # How often the sweeper releases overdue holds and renews or ends due subscriptions.
    sweep_interval_seconds: float = Field(default=60.0, gt=0)

    @field_validator("plans")
    @classmethod
    def _distinct_plan_ids(cls, plans: tuple[PlanSettings, ...]) -> tuple[PlanSettings, ...]:
        ids = [plan.id for plan in plans]
        if len(set(ids)) != len(ids):
            raise ValueError("MP_BILLING_PLANS names a plan id twice")
        return plans


class AssetsSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_ASSETS_", extra="ignore")

    # Where blobs live: files under blob_dir, or objects in the S3-compatible bucket below.
    blob_store: Literal["local", "s3"] = "local"
    # Unset: a "blobs" folder in the data folder. Uploads are staged in its "tmp" folder.
    blob_dir: Path | None = None
    s3_bucket: str | None = None
    # Unset: AWS itself; set it for MinIO, Ceph, R2 and other S3-compatible stores.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Unset: boto3's own chain (environment, shared credentials file, instance role).
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    # The HMAC key of signed URLs; unset: generated once into the data folder.
    url_signing_key: SecretStr | None = None


class JobsSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_JOBS_", extra="ignore")

    lease_seconds: float = 30.0
    max_attempts: int = 3
    # Test-mode jobs an account may have queued or running at once: they cost nothing, and
    # share the workers with paid jobs.
    max_unended_test_jobs: int = Field(default=10, ge=1)
    # How often the reconciler looks for expired leases and unsettled holds.
    reconcile_interval_seconds: float = 1.0
    # How long a webhook receiver has to answer one delivery.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # The delay before each attempt of a webhook delivery, the first included; once the last
    # attempt fails the delivery is given up. The default, Standard Webhooks', spans 27.6 hours.
    webhook_retry_schedule_seconds: tuple[float, ...] = Field(
        default=(0, 5, 300, 1800, 7200, 18000, 36000, 36000), min_length=1
    )
    # Hosts (names, IP addresses or networks) webhooks may reach although their addresses are
    # private, loopback or link-local, and over plain http. JSON: ["127.0.0.1", "10.0.0.0/8"].
    webhook_allowed_hosts: tuple[str, ...] = ()
    # Webhook deliveries in flight at once, each to a different job's receiver.
    webhook_concurrency: int = Field(default=16, ge=1)
    # The gateway's public origin, for the signed result URL in webhooks; unset: the gateway's
    # own setting (MP_GATEWAY_PUBLIC_URL, or its host and port).
    public_url: str | None = None

    @field_validator("webhook_retry_schedule_seconds")
    @classmethod
    def _no_negative_delay(cls, schedule: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in schedule):
            raise ValueError("MP_JOBS_WEBHOOK_RETRY_SCHEDULE_SECONDS holds a negative delay")
        return schedule

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _hosts_or_networks(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not (_HOST_NAME.fullmatch(host) or _is_network(host)):
                raise ValueError(f"MP_JOBS_WEBHOOK_ALLOWED_HOSTS: {host!r} is no host or network")
        return hosts


# A DNS name of letters, digits and hyphens, not all digits (that would be an IPv4 address).
_HOST_NAME = re.compile(r"(?=.*[a-z-])[a-z0-9-]+(\.[a-z0-9-]+)*\.?", re.IGNORECASE)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MP_INFERENCE_", extra="ignore")

    # Concurrent jobs this process works on.
    workers: int = 1
    # How long one LeaseJob call waits for work before asking again.
    lease_wait_seconds: float = 20.0
    # The backend of each mode, by mode name (JSON in the environment); the others: builtin.
    backends: dict[str, str] = Field(default_factory=dict)
    # The diffusers backend's model folder of each mode it runs, by mode name (JSON).
    diffusers_models: dict[str, Path] = Field(default_factory=dict)
    # Where the diffusers backend runs: "auto" (CUDA when present, else the CPU), "cpu", "cuda:1".
    diffusers_device: str = "auto"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MP_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # The public origin that signed URLs point at; unset: http://<host>:<port>.
    public_url: str | None = None
    # Verified API keys are served from memory this long (a revocation drops them at once).
    key_cache_seconds: float = 5.0
    # Jobs answered lately are served from memory at most this long (a change drops them at once).
    job_cache_seconds: float = Field(default=2.0, ge=0)
    # Requests one API key may make per window, all at once at most (GCRA).
    rate_limit_per_key: int = Field(default=100, gt=0)
    rate_limit_per_key_seconds: float = Field(default=1.0, gt=0)
    # Requests without a valid key (signup, signed URLs) one client IP may make per window.
    rate_limit_per_ip: int = Field(default=300, gt=0)
    rate_limit_per_ip_seconds: float = Field(default=60.0, gt=0)
    # Redis unreachable: "open" limits each gateway on its own, "closed" answers 503.
    rate_limit_redis_failure: Literal["open", "closed"] = "open"
    # Lifetime of the signed result URL in a completed job.
    result_url_seconds: int = 3600
    # Hosts (names, IP addresses or networks) the MCP upload_asset tool may fetch from although
    # private, loopback or link-local, and over plain http. JSON: ["127.0.0.1"].
    mcp_fetch_allowed_hosts: tuple[str, ...] = ()

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


_SECRETS = "secrets"


def _secrets_dir(data_dir: Path) -> Path:
    path = data_dir / _SECRETS
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def secret_exists(data_dir: Path, name: str) -> bool:
    """Whether a process has generated the secret into the data folder."""
    return (data_dir / _SECRETS / name).exists()  # not _secrets_dir(), which makes the folder


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
    _write_whole(_address_file(data_dir, service), address)


def _write_whole(path: Path, text: str) -> None:
    """Writes the file so that a reader finds it whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.tmp")
    draft.write_text(text)
    draft.replace(path)


def remember_port(data_dir: Path, service: str, port: int) -> None:
    """Keeps the port a service took, past its stop: started again, it asks for the same one,
    which its callers' channels still name (they read the address file once)."""
    _write_whole(_address_file(data_dir, service).with_suffix(".port"), str(port))


def remembered_port(data_dir: Path, service: str) -> int:
    """The port the service had when it last ran from this data folder; 0 if none."""
    try:
        return int(_address_file(data_dir, service).with_suffix(".port").read_text())
    except (FileNotFoundError, ValueError):
        return 0


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
