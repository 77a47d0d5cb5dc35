"""The API's objects as typed, immutable values.

Each keeps the object as the API sent it in `raw`: the API grows by adding fields, and a field
this version does not know is still there for the caller.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MODES = ("text_to_image", "image_to_image", "text_to_audio", "image_to_video")
TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})
# The error code of a job canceled because its deadline_seconds passed before it completed.
DEADLINE_EXCEEDED = "deadline_exceeded"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class JobResult:
    asset_id: str
    content_type: str
    url: str | None
    url_expires_at: datetime | None
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "JobResult":
        return cls(
            data["asset_id"],
            data["content_type"],
            data.get("url"),
            _time(data.get("url_expires_at")),
            data.get("width"),
            data.get("height"),
            data.get("duration_seconds"),
        )


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    id: str
    mode: str
    status: str
    progress: float
    prompt: str | None
    params: dict[str, Any]
    cost_credits: int
    livemode: bool
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    result: JobResult | None
    error: JobError | None
    attempts: int
    queue_position: int | None
    deadline_at: datetime | None
    metadata: dict[str, str]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job ended: completed, failed or canceled."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Job":
        result, error = data.get("result"), data.get("error")
        return cls(
            id=data["id"],
            mode=data["mode"],
            status=data["status"],
            progress=float(data.get("progress") or 0.0),
            prompt=data.get("prompt"),
            params=dict(data.get("params") or {}),
            cost_credits=int(data.get("cost_credits") or 0),
            livemode=bool(data.get("livemode")),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            completed_at=_time(data.get("completed_at")),
            result=JobResult.parse(result) if result else None,
            error=JobError(error["code"], error["message"]) if error else None,
            attempts=int(data.get("attempts") or 0),
            queue_position=data.get("queue_position"),
            deadline_at=_time(data.get("deadline_at")),
            metadata=dict(data.get("metadata") or {}),
            raw=data,
        )


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of a job: its name (`status`, `progress`, `queue_position`, or
    one a newer API added) and the job as it was then."""

    event: str
    job: Job

    @property
    def queue_position(self) -> int | None:
        """Jobs ahead of this one while it is queued (0: next); None once it left the queue."""
        return self.job.queue_position

    @classmethod
    def parse(cls, event: str, data: str) -> "JobEvent | None":
        """The event, or None when its data is not a job (an event this version cannot read,
        which a stream of job events skips rather than fail on)."""
        try:
            found = json.loads(data)
        except ValueError:
            return None
        if not isinstance(found, dict) or found.get("object", "job") != "job":
            return None
        try:
            return cls(event, Job.parse(found))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Quote:
    """What a job would cost, and whether the account's available credits cover it; a quote
    creates, holds and charges nothing."""

    mode: str
    cost_credits: int
    available_credits: int
    sufficient: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Quote":
        return cls(
            mode=data["mode"],
            cost_credits=int(data["cost_credits"]),
            available_credits=int(data["available_credits"]),
            sufficient=bool(data["sufficient"]),
            raw=data,
        )


@dataclass(frozen=True)
class Asset:
    id: str
    kind: str
    content_type: str
    size_bytes: int
    sha256: str
    origin: str
    livemode: bool
    created_at: datetime | None
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    job_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Asset":
        return cls(
            id=data["id"],
            kind=data["kind"],
            content_type=data["content_type"],
            size_bytes=int(data["size_bytes"]),
            sha256=data["sha256"],
            origin=data.get("origin", "upload"),
            livemode=bool(data.get("livemode", True)),
            created_at=_time(data.get("created_at")),
            width=data.get("width"),
            height=data.get("height"),
            duration_seconds=data.get("duration_seconds"),
            job_id=data.get("job_id"),
            raw=data,
        )


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: datetime | None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "SignedUrl":
        return cls(data["url"], _time(data.get("expires_at")))


@dataclass(frozen=True)
class Credits:
    available: int
    reserved: int


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    name: str | None
    plan: str
    credits: Credits
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Account":
        credits = data.get("credits") or {}
        return cls(
            id=data["id"],
            email=data["email"],
            name=data.get("name"),
            plan=data.get("plan", ""),
            credits=Credits(int(credits.get("available", 0)), int(credits.get("reserved", 0))),
            created_at=_time(data.get("created_at")),
            raw=data,
        )


@dataclass(frozen=True)
class ApiKey:
    """A key of the account; `token` only in the answer that made it."""

    id: str
    name: str
    mode: str
    scopes: tuple[str, ...]
    prefix: str
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    token: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "ApiKey":
        return cls(
            id=data["id"],
            name=data["name"],
            mode=data["mode"],
            scopes=tuple(data.get("scopes") or ()),
            prefix=data.get("prefix", ""),
            created_at=_time(data.get("created_at")),
            expires_at=_time(data.get("expires_at")),
            revoked_at=_time(data.get("revoked_at")),
            last_used_at=_time(data.get("last_used_at")),
            token=data.get("token"),
            raw=data,
        )


@dataclass(frozen=True)
class LedgerEntry:
    """One change of the account's credits (grant, hold, capture, release...)."""

    id: str
    type: str
    amount: int
    balance_after: int
    job_id: str | None
    description: str
    created_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "LedgerEntry":
        return cls(
            id=data["id"],
            type=data["type"],
            amount=int(data["amount"]),
            balance_after=int(data["balance_after"]),
            job_id=data.get("job_id"),
            description=data.get("description") or "",
            created_at=_time(data.get("created_at")),
            raw=data,
        )


@dataclass(frozen=True)
class Price:
    """What a mode costs: `credits` per job, or per started `unit_block` seconds."""

    mode: str
    credits: int
    unit: str
    unit_block: int
    aliases: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Price":
        return cls(
            mode=data["mode"],
            credits=int(data["credits"]),
            unit=data["unit"],
            unit_block=int(data.get("unit_block", 1)),
            aliases=tuple(data.get("aliases") or ()),
            raw=data,
        )


@dataclass(frozen=True)
class Plan:
    """A plan on offer: the credits it refills each period, and its price."""

    id: str
    name: str
    credits_per_period: int
    period_days: int
    price_cents: int
    currency: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Plan":
        return cls(
            id=data["id"],
            name=data.get("name", ""),
            credits_per_period=int(data["credits_per_period"]),
            period_days=int(data["period_days"]),
            price_cents=int(data.get("price_cents", 0)),
            currency=data.get("currency", ""),
            raw=data,
        )


@dataclass(frozen=True)
class Subscription:
    id: str
    plan: str
    status: str
    cancel_at_period_end: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    created_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Subscription":
        return cls(
            id=data["id"],
            plan=data["plan"],
            status=data["status"],
            cancel_at_period_end=bool(data.get("cancel_at_period_end")),
            current_period_start=_time(data.get("current_period_start")),
            current_period_end=_time(data.get("current_period_end")),
            created_at=_time(data.get("created_at")),
            raw=data,
        )


@dataclass(frozen=True)
class SignUp:
    """A new account, its first key (with the token, shown this once) and its webhook secret."""

    account: Account
    api_key: ApiKey
    webhook_secret: str

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "SignUp":
        return cls(
            Account.parse(data["account"]), ApiKey.parse(data["api_key"]), data["webhook_secret"]
        )
