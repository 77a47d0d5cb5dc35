"""The rules of a job: what a spec may say in each mode, its defaults, and how its state moves.

Each mode is a table of field rules; a mode is available once it has a table. A spec is
resolved by applying its mode's rules in order: each rule checks one field and fills its
default, so the job stores and echoes exactly what it will run with.
"""

import base64
import hashlib
import hmac
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit

from magicpixels.core import idempotency
from magicpixels.core.errors import InvalidArgument
from magicpixels.core.timestamps import as_utc
from magicpixels.jobs.v1 import jobs_pb2

# The API's names, in the order of the JobMode enum.
MODES = ("text_to_image", "image_to_image", "text_to_audio", "image_to_video")
MAX_SEED = 2**32 - 1
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8
_MAX_URL_LENGTH = 2048

# The longest a LeaseJob call holds on waiting for work.
MAX_LEASE_WAIT_SECONDS = 60.0
# A job still pending this long has lost its CreateJob call (the reserve call's own deadline
# is far shorter), so the reconciler releases whatever was held and fails it.
PENDING_TIMEOUT = timedelta(seconds=60)
# A replay of a create still pending this long resumes it (Reserve is idempotent by job id):
# the first call, whose billing call gives up after a few seconds, is gone.
RESUME_PENDING_AFTER = timedelta(seconds=10)
_MAX_RETRY_DELAY_SECONDS = 60


class State(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class HoldStatus(StrEnum):
    """Where the job's credits stand in billing, as last confirmed by billing.

    HELD means billing may hold credits for the job: an ended job still marked held is settled
    (captured or released) by the reconciler.
    """

    NONE = "none"
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"


_MOVES: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.QUEUED, State.FAILED}),
    State.QUEUED: frozenset({State.RUNNING, State.CANCELED}),
    # Back to queued: a retry, or a lease that expired.
    State.RUNNING: frozenset({State.COMPLETED, State.FAILED, State.CANCELED, State.QUEUED}),
}
TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELED})


def sources_of(target: State) -> frozenset[State]:
    """The states a job may move to `target` from."""
    return frozenset(source for source, targets in _MOVES.items() if target in targets)


def is_terminal(state: str) -> bool:
    return state in TERMINAL


def hold_resolution(state: str) -> HoldStatus:
    """How a job that ended in `state` settles its hold: only a completed job pays."""
    return HoldStatus.CAPTURED if state == State.COMPLETED else HoldStatus.RELEASED


def resolved_elsewhere(wanted: HoldStatus) -> HoldStatus:
    """Where a hold stands when billing refused to resolve it as `wanted`, being resolved already.

    Billing refuses to capture only a hold released or expired (its credits went back), and to
    release only a captured one.
    """
    return HoldStatus.RELEASED if wanted == HoldStatus.CAPTURED else HoldStatus.CAPTURED


def may_retry(attempts: int, max_attempts: int) -> bool:
    return attempts < max_attempts


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff after the given number of attempts: 1 s, 2 s, 4 s... up to a minute."""
    return timedelta(seconds=min(2 ** (attempts - 1), _MAX_RETRY_DELAY_SECONDS))


def mode_name(mode: int) -> str | None:
    """The API's name of a JobMode value; None for unspecified or unknown values."""
    try:
        name = jobs_pb2.JobMode.Name(mode).removeprefix("JOB_MODE_").lower()
    except ValueError:
        return None
    return name if name in MODES else None


def lease_modes(modes: Iterable[int]) -> list[str]:
    """The mode names a worker asks work for."""
    names = [mode_name(mode) for mode in modes]
    if not names:
        raise InvalidArgument(
            "PARAMETER_MISSING", "modes must name at least one mode", param="modes"
        )
    if None in names:
        raise _mode_unknown("modes")
    return [name for name in names if name]


def mode_filter(mode: int) -> str | None:
    """A JobMode value as a filter; None for unspecified."""
    if mode == jobs_pb2.JOB_MODE_UNSPECIFIED:
        return None
    name = mode_name(mode)
    if name is None:
        raise _mode_unknown("mode")
    return name


def state_filter(state: int) -> State | None:
    """A JobState value as a filter; None for unspecified."""
    if state == jobs_pb2.JOB_STATE_UNSPECIFIED:
        return None
    try:
        return State(jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower())
    except ValueError:
        raise _invalid("state", "a job state") from None


def check_progress(progress: float) -> None:
    if not 0.0 <= progress <= 1.0:
        raise _invalid("progress", "between 0 and 1")


def require(value: str, param: str) -> None:
    if not value:
        raise InvalidArgument("PARAMETER_MISSING", f"{param} is required", param=param)


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


@dataclass(frozen=True)
class InputAsset:
    """An asset a spec names (input_asset_id, audio_asset_id), as the assets service knows it."""

    kind: str
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None


# The assets a spec names, by the field naming them; the service looks them up for the owner.
Inputs = Mapping[str, InputAsset]
NO_INPUTS: Inputs = MappingProxyType({})
ASSET_FIELDS = ("input_asset_id", "audio_asset_id")


class Rule(Protocol):
    field: str

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        """Checks the field, raising InvalidArgument, and fills its default when absent."""

    def schema(self) -> dict[str, Any]:
        """The field as JSON Schema: what `apply` accepts, for clients to describe (MCP)."""


def mode_schema(mode: str) -> dict[str, Any]:
    """The fields of a create of `mode` (an API mode name) as a JSON Schema object, from the
    rules that check them."""
    rules = RULES[mode]
    return {
        "type": "object",
        "properties": {rule.field: rule.schema() for rule in rules},
        "required": [rule.field for rule in rules if getattr(rule, "required", False)],
    }


def _json_type(field: str) -> str:
    """The JSON Schema type of a JobSpec field, from its protobuf type."""
    descriptor = jobs_pb2.JobSpec.DESCRIPTOR.fields_by_name[field]
    if descriptor.type == descriptor.TYPE_STRING:
        return "string"
    if descriptor.type in (descriptor.TYPE_DOUBLE, descriptor.TYPE_FLOAT):
        return "number"
    return "integer"


@dataclass(frozen=True)
class Text:
    field: str
    required: bool = False
    max_length: int = 4000

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        value: str = getattr(spec, self.field)
        if self.required:
            require(value, self.field)
        if len(value) > self.max_length:
            raise _invalid(self.field, f"at most {self.max_length} characters")

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.required:
            schema["minLength"] = 1
        return schema


@dataclass(frozen=True)
class Number:
    field: str
    minimum: float
    maximum: float
    default: float | Callable[[], int] | None = None
    multiple_of: int | None = None

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        if not spec.HasField(self.field):
            self._fill_default(spec)
            return
        value = getattr(spec, self.field)
        # Written so that NaN fails too.
        in_range = self.minimum <= value <= self.maximum
        if not in_range or (self.multiple_of and value % self.multiple_of):
            raise _invalid(self.field, self._requirement())

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": _json_type(self.field),
            "minimum": self.minimum,
            "maximum": self.maximum,
        }
        if self.multiple_of:
            schema["multipleOf"] = self.multiple_of
        if self.default is not None and not callable(self.default):
            schema["default"] = self.default
        return schema

    def _fill_default(self, spec: jobs_pb2.JobSpec) -> None:
        if self.default is not None:
            setattr(spec, self.field, self.default() if callable(self.default) else self.default)

    def _requirement(self) -> str:
        bounds = f"between {_number(self.minimum)} and {_number(self.maximum)}"
        return f"a multiple of {self.multiple_of} {bounds}" if self.multiple_of else bounds


def _number(value: float) -> str:
    """A bound as a person writes it: 4294967295, 30, 0.5."""
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Choice:
    """One of `options`; the first is the default."""

    field: str
    options: tuple[str, ...]

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        value = getattr(spec, self.field)
        if not value:
            setattr(spec, self.field, self.options[0])
        elif value not in self.options:
            raise _invalid(self.field, f"one of {', '.join(self.options)}")

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.options), "default": self.options[0]}


@dataclass(frozen=True)
class Metadata:
    field: str = "metadata"
    max_pairs: int = 16
    max_key_length: int = 40
    max_value_length: int = 500

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        pairs = getattr(spec, self.field)
        if len(pairs) > self.max_pairs:
            raise _invalid(self.field, f"at most {self.max_pairs} pairs")
        if not all(self._fits(key, value) for key, value in pairs.items()):
            raise _invalid(
                self.field,
                f"keys of 1 to {self.max_key_length} characters and values of at most "
                f"{self.max_value_length}",
            )

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "maxProperties": self.max_pairs,
            "propertyNames": {"minLength": 1, "maxLength": self.max_key_length},
            "additionalProperties": {"type": "string", "maxLength": self.max_value_length},
        }

    def _fits(self, key: str, value: str) -> bool:
        return 0 < len(key) <= self.max_key_length and len(value) <= self.max_value_length


@dataclass(frozen=True)
class WebhookUrl:
    """An absolute http or https URL; the hosts it may name are the WebhookPolicy's to say."""

    field: str = "webhook_url"

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        url = getattr(spec, self.field)
        if url and webhook_target(url) is None:
            requirement = f"an http or https URL of at most {_MAX_URL_LENGTH} characters"
            raise _invalid(self.field, requirement)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "uri", "maxLength": _MAX_URL_LENGTH}


@dataclass(frozen=True)
class AssetRef:
    """An asset of the job's owner, of the kind the mode takes."""

    field: str
    kind: str
    required: bool = True

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        value: str = getattr(spec, self.field)
        if self.required:
            require(value, self.field)
        if value and inputs[self.field].kind != self.kind:
            message = f"{self.field} must name an {self.kind} asset, not {inputs[self.field].kind}"
            raise InvalidArgument("ASSET_KIND_MISMATCH", message, param=self.field)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^asset_"}


@dataclass(frozen=True)
class Side:
    """A width or height: by default the input image's, its size fitted to the limits."""

    field: str
    default: int | None = None

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        if not spec.HasField(self.field):
            source = inputs.get("input_asset_id")
            if source and source.width and source.height:
                width, height = fitted_size(source.width, source.height)
                setattr(spec, self.field, width if self.field == "width" else height)
            else:
                setattr(spec, self.field, self.default)
        self._bounds().apply(spec)

    def schema(self) -> dict[str, Any]:
        schema = self._bounds().schema()
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def _bounds(self) -> Number:
        return Number(self.field, MIN_SIDE, MAX_SIDE, multiple_of=SIDE_MULTIPLE)


def fitted_size(width: int, height: int) -> tuple[int, int]:
    """A size scaled into the limits keeping its shape (fitting each side alone turned a 4:1
    input into 2:1, and the backend cropped half of it away), each side then rounded down to a
    multiple of 8; a shape longer than 32:1 keeps what the limits allow of it."""
    scale = max(min(1.0, MAX_SIDE / max(width, height)), MIN_SIDE / min(width, height))
    return _allowed_side(width * scale), _allowed_side(height * scale)


def _allowed_side(pixels: float) -> int:
    multiple = round(pixels) // SIDE_MULTIPLE * SIDE_MULTIPLE
    return min(max(multiple, MIN_SIDE), MAX_SIDE)


@dataclass(frozen=True)
class VideoDuration:
    """1..30 s; by default as long as the soundtrack (within the limits), else 4 s."""

    field: str = "duration_seconds"
    minimum: float = 1
    maximum: float = 30
    default: float = 4

    def apply(self, spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> None:
        soundtrack = inputs.get("audio_asset_id")
        if not spec.HasField(self.field) and soundtrack and soundtrack.duration_seconds:
            fitted = min(max(soundtrack.duration_seconds, self.minimum), self.maximum)
            setattr(spec, self.field, fitted)
        self._bounds().apply(spec)

    def schema(self) -> dict[str, Any]:
        """Without a default: it is the soundtrack's length when there is one."""
        schema = self._bounds().schema()
        del schema["default"]
        return schema

    def _bounds(self) -> Number:
        return Number(self.field, self.minimum, self.maximum, default=self.default)


_EVERY_MODE: tuple[Rule, ...] = (
    Number("deadline_seconds", 1, 86400),
    WebhookUrl(),
    Metadata(),
)

_SEED = Number("seed", 0, MAX_SEED, default=random_seed)
# The builtin backend uses steps only for the granularity of its progress reports.
_DIFFUSION = (Number("steps", 1, 100, default=20), Number("guidance_scale", 0, 30, default=7.5))
_IMAGE_FORMAT = Choice("output_format", ("png", "jpeg", "webp"))

RULES: dict[str, tuple[Rule, ...]] = {
    "text_to_image": (
        Text("prompt", required=True),
        Text("negative_prompt"),
        Side("width", default=1024),
        Side("height", default=1024),
        _SEED,
        *_DIFFUSION,
        _IMAGE_FORMAT,
        *_EVERY_MODE,
    ),
    "image_to_image": (
        Text("prompt", required=True),
        Text("negative_prompt"),
        AssetRef("input_asset_id", "image"),
        Side("width"),
        Side("height"),
        _SEED,
        *_DIFFUSION,
        Number("strength", 0, 1, default=0.6),
        _IMAGE_FORMAT,
        *_EVERY_MODE,
    ),
    "text_to_audio": (
        Text("prompt", required=True),
        _SEED,
        Number("duration_seconds", 1, 300, default=10),
        Choice("output_format", ("wav", "mp3", "flac", "ogg")),
        *_EVERY_MODE,
    ),
    "image_to_video": (
        Text("prompt"),
        Text("negative_prompt"),
        AssetRef("input_asset_id", "image"),
        AssetRef("audio_asset_id", "audio", required=False),
        Side("width"),
        Side("height"),
        _SEED,
        *_DIFFUSION,
        VideoDuration(),
        Number("fps", 8, 60, default=24),
        Choice("output_format", ("mp4",)),
        *_EVERY_MODE,
    ),
}


def resolve_spec(spec: jobs_pb2.JobSpec, inputs: Inputs = NO_INPUTS) -> jobs_pb2.JobSpec:
    """A copy of the spec with every default filled in; InvalidArgument on the first fault.

    `inputs` describes the assets the spec names (see `named_assets`), looked up for its owner.
    """
    rules = _rules_of(spec.mode)
    resolved = jobs_pb2.JobSpec()
    resolved.CopyFrom(spec)
    _refuse_unused_fields(resolved, rules)
    for rule in rules:
        rule.apply(resolved, inputs)
    return resolved


def named_assets(spec: jobs_pb2.JobSpec) -> dict[str, str]:
    """The asset ids the spec names, by field: what to look up before resolving it."""
    return {field: getattr(spec, field) for field in ASSET_FIELDS if getattr(spec, field)}


def _rules_of(mode: int) -> tuple[Rule, ...]:
    name = mode_name(mode)
    if name is None:
        raise _mode_unknown("mode")
    return RULES[name]


def _refuse_unused_fields(spec: jobs_pb2.JobSpec, rules: tuple[Rule, ...]) -> None:
    """Refuses the fields the mode has no use for."""
    accepted = {"mode", *(rule.field for rule in rules)}
    for descriptor, _ in spec.ListFields():
        if descriptor.name not in accepted:
            raise _invalid(descriptor.name, f"absent in {mode_name(spec.mode)} jobs")


def idempotency_claim(request: jobs_pb2.CreateJobRequest) -> idempotency.Claim | None:
    """The claim a CreateJob request makes on its key; None without a key.

    The hash covers the request as the client sent it (its spec before defaults: a resolved
    spec has a random seed), its livemode and the digest of the client's whole request, if
    any; the account is the key's scope.
    """
    hashed = jobs_pb2.CreateJobRequest(
        livemode=request.livemode, spec=request.spec, request_digest=request.request_digest
    )
    return idempotency.claim(request.idempotency_key, hashed)


def check_replay(claim: idempotency.Claim, stored_hash: str, job_state: str) -> None:
    """Refuses to answer a request with the job its key created unless it is the same request
    and that job was created."""
    idempotency.check_same_request(claim, stored_hash)
    if job_state == State.PENDING:
        raise idempotency.key_in_use()


def _mode_unknown(param: str) -> InvalidArgument:
    message = f"{param} must be one of {', '.join(MODES)}"
    return InvalidArgument("MODE_UNKNOWN", message, param=param)


def _invalid(field: str, requirement: str) -> InvalidArgument:
    return InvalidArgument("PARAMETER_INVALID", f"{field} must be {requirement}", param=field)


# Webhooks (Standard Webhooks): which moves make an event, where a delivery may go, how it is
# signed and when it is tried again.

_WEBHOOK_PORTS = {"http": 80, "https": 443}
# The most a receiver's Retry-After may hold a delivery back.
MAX_RETRY_AFTER = timedelta(days=1)
# IPv6 prefixes that carry an IPv4 address (NAT64's well-known prefix; 6to4 and IPv4-mapped
# addresses have their own accessors): such an address goes where its IPv4 address goes.
_NAT64 = IPv6Network("64:ff9b::/96")
# IPv6 unicast on the internet is 2000::/3 (RFC 4291): outside it, beyond what carries an IPv4
# address, nothing is public, whatever Python 3.11 calls global (local-use NAT64 64:ff9b:1::/48,
# IPv4-compatible ::a00:1, IPv4-translated ::ffff:0:a00:1 lead inward).
_GLOBAL_UNICAST = IPv6Network("2000::/3")
# Within it, documentation's prefix (RFC 9637), which Python 3.11 does not know.
_NEVER_PUBLIC = (IPv6Network("3fff::/20"),)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    # Every attempt of the retry schedule failed.
    FAILED = "failed"
    # Its address is one webhooks may not reach, or its account is gone: never sent.
    REFUSED = "refused"


def webhook_event(state: str, attempts: int, was_queued: bool) -> str | None:
    """The event a job's move into `state` makes: `job.running` when its first lease starts it,
    `job.<state>` when it ends; none for a job never queued, which its account never saw."""
    if not was_queued:
        return None
    if state == State.RUNNING:
        return "job.running" if attempts == 1 else None
    return f"job.{state}" if state in TERMINAL else None


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    # Lowercase; an IPv6 address without its brackets.
    host: str
    port: int


def webhook_target(url: str) -> WebhookTarget | None:
    """Where an http or https URL points; None for any other text."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        return None
    if len(url) > _MAX_URL_LENGTH or parts.scheme not in _WEBHOOK_PORTS or not host:
        return None
    return WebhookTarget(parts.scheme, host, port or _WEBHOOK_PORTS[parts.scheme])


def is_public(address: IPAddress) -> bool:
    """Whether an address is a public unicast one: not private, loopback, link-local, shared,
    reserved, documentation or multicast, including through an IPv6 form of an IPv4 address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_public(embedded)
    if isinstance(address, IPv6Address) and (
        address not in _GLOBAL_UNICAST or any(address in net for net in _NEVER_PUBLIC)
    ):
        return False
    site_local = isinstance(address, IPv6Address) and address.is_site_local
    return address.is_global and not address.is_multicast and not site_local


def _embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    if isinstance(address, IPv4Address):
        return None
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour


@dataclass(frozen=True)
class WebhookPolicy:
    """Where webhooks may go: public addresses over https. The operator's allow-list, by host
    name or network, also lets them reach private, loopback and link-local addresses, and use
    plain http."""

    hostnames: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, hosts: Iterable[str]) -> "WebhookPolicy":
        """The policy of an allow-list whose entries are IP networks or addresses, or host names."""
        hostnames: set[str] = set()
        networks: list[IPNetwork] = []
        for host in hosts:
            try:
                networks.append(ip_network(host, strict=False))
            except ValueError:
                hostnames.add(host.lower().rstrip("."))
        return cls(frozenset(hostnames), tuple(networks))

    def check(self, url: str) -> None:
        """Refuses, as an invalid webhook_url, what no delivery would be allowed to reach: plain
        http to a host not allowed, an address literal that is not public and not allowed.
        Host names are resolved when delivering, since their addresses may change."""
        target = webhook_target(url)
        if target is None:
            return  # the WebhookUrl rule refuses it
        literal = ip_literal(target.host)
        if literal is not None and not self.may_reach(target.host, literal):
            raise _invalid("webhook_url", "a URL of a public address")
        if target.scheme == "http" and not self.allow_listed(target.host):
            requirement = "an https URL (http only to the hosts the operator allows)"
            raise _invalid("webhook_url", requirement)

    def allow_listed(self, host: str) -> bool:
        literal = ip_literal(host)
        if literal is None:
            return host.rstrip(".") in self.hostnames
        return any(_unwrapped(literal) in network for network in self.networks)

    def may_reach(self, host: str, address: IPAddress) -> bool:
        """Whether a delivery to `host` may connect to `address`, one the host resolved to."""
        return is_public(address) or self.allow_listed(host) or self.allow_listed(str(address))


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _unwrapped(address: IPAddress) -> IPAddress:
    return _embedded_ipv4(address) or address


def next_delivery_delay(
    attempts: int, schedule: Sequence[float], retry_after: timedelta | None
) -> timedelta | None:
    """How long after its `attempts`-th attempt failed a delivery is tried again: the schedule's
    next delay (`schedule[0]` precedes the first attempt), or the receiver's Retry-After when
    that is longer. None once the schedule is spent: the delivery is given up."""
    if attempts >= len(schedule):
        return None
    delay = timedelta(seconds=schedule[attempts])
    return max(delay, retry_after) if retry_after is not None else delay


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A Retry-After header (RFC 9110: seconds or an HTTP date), at most MAX_RETRY_AFTER; None
    when absent or unreadable."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return timedelta(seconds=min(int(value), MAX_RETRY_AFTER.total_seconds()))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(as_utc(when) - now, timedelta(0)), MAX_RETRY_AFTER)


def webhook_signature(secrets: Iterable[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under each
    secret (`whsec_` and its base64 key), space-separated, so that a receiver holding either
    secret of a rotation verifies it."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(f"v1,{_hmac_base64(secret, signed)}" for secret in secrets)


def _hmac_base64(secret: str, signed: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
