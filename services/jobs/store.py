"""The jobs tables and their queries.

Every change of a job's state is one UPDATE guarded by the states it may come from (and, for
a worker, by its lease token), written in the same transaction as its row in `job_events`, so
two callers racing for the same job cannot both win. A job is visible to its account once it
was queued: a pending job, or one that failed before its credits were held, never is.

An Idempotency-Key is claimed in the transaction that inserts the job it creates, so of the
concurrent requests with the same key the unique (account_id, key) lets exactly one create.

A move that makes a webhook event writes its delivery to the outbox (`webhook_deliveries`) in
the same transaction, so no event is lost or sent for a move that did not happen.

The statements of the hot path (create, lease, heartbeat, complete, get) are built once, with
bind parameters: building one and its cache key on each call cost more CPU than running it
(profiled under bench/jobs.py). A move and its status events are one statement: a
data-modifying CTE on PostgreSQL, triggers on SQLite (migration 0005).
"""

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from google.protobuf import json_format
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    ScalarSelect,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    Update,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from magicpixels.core import idempotency
from magicpixels.core.db import statements_alone
from magicpixels.core.idempotency import Claim
from magicpixels.core.ids import new_id
from magicpixels.core.timestamps import as_utc, to_timestamp
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs.domain import (
    TERMINAL,
    DeliveryState,
    HoldStatus,
    State,
    mode_name,
    sources_of,
    webhook_event,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("mode", String(32), nullable=False),
    # The resolved JobSpec as protobuf JSON.
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("progress", Float, nullable=False),
    Column("cost_credits", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    # The fencing token of the newest lease: only its holder may report, complete or fail.
    Column("lease_token", BigInteger, nullable=False),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("worker_id", String),
    # A retried job waits for its backoff until then.
    Column("not_before", DateTime(timezone=True)),
    Column("result_asset_id", String(40)),
    # The JobResult as protobuf JSON.
    Column("result", Text),
    Column("error_code", String),
    Column("error_message", Text),
    Column("billing", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("queued_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("deadline_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The job's place in its mode's queue, taken when first queued and kept through retries:
    # each mode numbers its jobs 1, 2, 3... without a gap (see `queue_position`).
    Column("queue_seq", BigInteger),
    # The W3C traceparent of the creating request: the worker's spans join its trace.
    Column("trace_parent", String(64)),
    Index("ix_jobs_state_mode_queued_at", "state", "mode", "queued_at"),
    Index("ix_jobs_state_mode_queue_seq", "state", "mode", "queue_seq"),
    # The scheduler finds the next deadline of the jobs not ended, one index seek per state.
    Index("ix_jobs_state_deadline_at", "state", "deadline_at"),
    # Ids sort by creation time, so the newest-first history pages on (account_id, id).
    Index("ix_jobs_account_id_id", "account_id", "id"),
    # Few jobs stay held once ended: the reconciler finds them without reading the rest.
    Index("ix_jobs_billing_state", "billing", "state"),
)

# One row per mode: the last queue_seq it handed out, and the queued_at given with it. On
# PostgreSQL taking the next number locks the row until the transaction that queues the job
# commits (on SQLite writers take turns anyway), so numbers are committed in order and every
# snapshot sees each mode's numbers from 1 without a gap.
job_queues = Table(
    "job_queues",
    metadata,
    Column("mode", String(32), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    # Never earlier than the previous job's, so queued_at follows queue_seq within a mode.
    Column("last_queued_at", DateTime(timezone=True)),
)

job_events = Table(
    "job_events",
    metadata,
    # SQLite numbers rows itself only for an INTEGER primary key.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False),
    Column("type", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("progress", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_job_events_job_id_id", "job_id", "id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("account_id", String(40), nullable=False),
    Column("key", String(255), nullable=False),
    # The sha256 of the request that claimed the key, hex.
    Column("request_hash", String(64), nullable=False),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("account_id", "key"),
    Index("ix_idempotency_keys_created_at", "created_at"),
    Index("ix_idempotency_keys_job_id", "job_id"),
)

# The webhook outbox: one row per event of a job that has a webhook_url, written in the
# transaction that moves the job. A job's deliveries go out one at a time, in sequence order.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    # The Standard Webhooks message id (`webhook-id`), the same on every attempt.
    Column("id", String(40), primary_key=True),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False),
    Column("account_id", String(40), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("url", Text, nullable=False),
    # The job as the event left it: a Job message as protobuf JSON.
    Column("job", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    # The dispatcher that claimed an attempt holds it until then; after that, another may.
    Column("locked_until", DateTime(timezone=True)),
    # The receiver's HTTP status, or why no status came, on the last attempt.
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("job_id", "event_type"),
    UniqueConstraint("job_id", "sequence"),
    Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
)

JobRow = Row[Any]
DeliveryRow = Row[Any]


def spec_of(job: JobRow) -> jobs_pb2.JobSpec:
    return json_format.Parse(job.spec, jobs_pb2.JobSpec())


def result_of(job: JobRow) -> jobs_pb2.JobResult | None:
    return json_format.Parse(job.result, jobs_pb2.JobResult()) if job.result else None


def job_message(job: JobRow, queue_position: int | None = None) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        id=job.id,
        account_id=job.account_id,
        livemode=job.livemode,
        spec=spec_of(job),
        state=jobs_pb2.JobState.Value(f"JOB_STATE_{job.state.upper()}"),
        progress=job.progress,
        cost_credits=job.cost_credits,
        attempts=job.attempts,
        queue_position=queue_position,
        result=result_of(job),
        error=_error_of(job),
        create_time=to_timestamp(job.created_at),
        start_time=to_timestamp(job.started_at),
        complete_time=to_timestamp(job.completed_at),
        deadline_time=to_timestamp(job.deadline_at),
        trace_parent=job.trace_parent,
    )


def _error_of(job: JobRow) -> jobs_pb2.JobError | None:
    if not job.error_code:
        return None
    return jobs_pb2.JobError(code=job.error_code, message=job.error_message)


def webhook_event_of(job: JobRow) -> str | None:
    """The webhook event the move that left the job so made, when the job has a webhook_url."""
    event = webhook_event(job.state, job.attempts, job.queued_at is not None)
    return event if event and _has_webhook_url(job) else None


def _has_webhook_url(job: JobRow) -> bool:
    """Whether the job's spec names a webhook_url, from its JSON: every move and announcement
    asks, and a plain JSON read costs a fraction of parsing the JobSpec. Protobuf's JSON names
    the field in camelCase, and its parser accepts the field's own name too."""
    spec = json.loads(job.spec)
    return bool(spec.get("webhookUrl") or spec.get("webhook_url"))


async def insert_pending(
    engine: AsyncEngine,
    account_id: str,
    livemode: bool,
    spec: jobs_pb2.JobSpec,
    claim: Claim | None,
    now: datetime,
    trace_parent: str | None = None,
) -> JobRow | None:
    """Inserts a pending job and the claim of its idempotency key, if any, in one transaction.

    None when a request of the last day claimed the key already: nothing is inserted.
    """
    values = {**_pending_values(account_id, livemode, spec, now), "trace_parent": trace_parent}
    try:
        async with statements_alone(engine) if claim is None else engine.begin() as connection:
            job = (await connection.execute(_INSERT_JOB, values)).one()
            if claim is not None:
                await _claim(connection, account_id, claim, job.id, now)
    except IntegrityError:
        if claim is None:
            raise
        return None
    return job


_INSERT_JOB = insert(jobs).returning(jobs)


def _pending_values(
    account_id: str, livemode: bool, spec: jobs_pb2.JobSpec, now: datetime
) -> dict[str, Any]:
    has_deadline = spec.HasField("deadline_seconds")
    return {
        "id": new_id("job"),
        "account_id": account_id,
        "livemode": livemode,
        "mode": mode_name(spec.mode),
        "spec": json_format.MessageToJson(spec, indent=None),
        "state": State.PENDING,
        "progress": 0.0,
        "cost_credits": 0,
        "attempts": 0,
        "lease_token": 0,
        "billing": HoldStatus.NONE,
        "created_at": now,
        "deadline_at": now + timedelta(seconds=spec.deadline_seconds) if has_deadline else None,
        "updated_at": now,
    }


async def _claim(
    connection: AsyncConnection, account_id: str, claim: Claim, job_id: str, now: datetime
) -> None:
    """Claims the key for the job (idempotency.record)."""
    await idempotency.record(
        connection,
        idempotency_keys,
        claim,
        now,
        scope={"account_id": account_id},
        made={"job_id": job_id},
    )


async def claimed(engine: AsyncEngine, account_id: str, key: str) -> JobRow | None:
    """The job the account's key created, with the `request_hash` of the request that did."""
    query = (
        select(idempotency_keys.c.request_hash, *jobs.c)
        .join(jobs, jobs.c.id == idempotency_keys.c.job_id)
        .where(idempotency_keys.c.account_id == account_id, idempotency_keys.c.key == key)
    )
    async with engine.connect() as connection:
        return (await connection.execute(query)).one_or_none()


async def count_unended_test_jobs(engine: AsyncEngine, account_id: str) -> int:
    """The account's test-mode jobs not yet ended: pending, queued or running."""
    query = select(func.count()).where(
        jobs.c.account_id == account_id,
        jobs.c.livemode.is_(False),
        jobs.c.state.not_in(sorted(TERMINAL)),
    )
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


async def get_job(engine: AsyncEngine, job_id: str) -> JobRow | None:
    async with engine.connect() as connection:
        return (await connection.execute(_GET_JOB, {"job_id": job_id})).one_or_none()


async def get_visible(engine: AsyncEngine, job_id: str, account_id: str) -> JobRow | None:
    params = {"job_id": job_id, "account": account_id}
    async with engine.connect() as connection:
        return (await connection.execute(_GET_VISIBLE, params)).one_or_none()


async def list_visible(
    engine: AsyncEngine,
    account_id: str,
    livemode: bool,
    *,
    limit: int,
    before_id: str | None = None,
    state: State | None = None,
    mode: str | None = None,
) -> list[JobRow]:
    """The account's jobs, newest first, starting after the job `before_id`."""
    filters = [*_visible_to(account_id), jobs.c.livemode == livemode]
    if before_id:
        filters.append(jobs.c.id < before_id)
    if state:
        filters.append(jobs.c.state == state)
    if mode:
        filters.append(jobs.c.mode == mode)
    query = select(jobs).where(*filters).order_by(jobs.c.id.desc()).limit(limit)
    async with engine.connect() as connection:
        return list((await connection.execute(query)).all())


def _visible_to(account_id: str | BindParameter[str]) -> tuple[ColumnElement[bool], ...]:
    return jobs.c.account_id == account_id, jobs.c.queued_at.is_not(None)


_JOB_ID = jobs.c.id == bindparam("job_id")
_GET_JOB = select(jobs).where(_JOB_ID)
_GET_VISIBLE = _GET_JOB.where(*_visible_to(bindparam("account")))


async def queued_by_mode(engine: AsyncEngine) -> dict[str, tuple[int, datetime]]:
    """Each mode's queued jobs: how many, and when the oldest of them was created."""
    query = (
        select(jobs.c.mode, func.count(), func.min(jobs.c.created_at))
        .where(jobs.c.state == State.QUEUED)
        .group_by(jobs.c.mode)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return {mode: (count, as_utc(oldest)) for mode, count, oldest in rows}


# The states of a job that was queued once and is out of the queue now.
_OUT_OF_QUEUE = sorted(TERMINAL | {State.RUNNING})


async def queue_position(engine: AsyncEngine, job: JobRow) -> int | None:
    """How many queued jobs of the job's mode are ahead of it; None once it left the queue."""
    async with engine.connect() as connection:
        found = await connection.execute(QUEUE_POSITION, queue_position_params(job))
        head, left_early = found.one()
    return _position(job, head, left_early)


def queue_position_params(job: JobRow) -> dict[str, Any]:
    return {"mode": job.mode, "queue_seq": job.queue_seq}


def _position(job: JobRow, head: int | None, left_early: int | None) -> int | None:
    if head is None or left_early is None or head > job.queue_seq:
        return None
    return int(job.queue_seq - head - left_early)


async def get_visible_placed(
    engine: AsyncEngine, job_id: str, account_id: str
) -> tuple[JobRow, int | None] | None:
    """The account's job, as `get_visible` (with two columns more), and its `queue_position`:
    one statement, one snapshot, which computes the position only of a queued job."""
    params = {"job_id": job_id, "account": account_id}
    async with engine.connect() as connection:
        found = (await connection.execute(_GET_VISIBLE_PLACED, params)).one_or_none()
    if found is None:
        return None
    return found, _position(found, found.queue_head, found.left_early)


def _queue_place(
    mode: ColumnElement[str], queue_seq: ColumnElement[int]
) -> tuple[ColumnElement[int | None], ColumnElement[int]]:
    """The head of a job's queue (its lowest queued number) and how many jobs between the head
    and the job have left the queue already.

    Not a count of the jobs ahead, which would read as many index entries as there are: a
    mode's numbers have no gap, so the jobs ahead are the numbers from the head to the job's,
    less those out of the queue already, the few that left it out of order (canceled, past
    their deadline, or leased while the head waited out a retry's backoff). Two index seeks
    and a range as long as the jobs that left out of order. Its states are literals, so that
    PostgreSQL may plan it once; written into the SQL when it is compiled, not at every
    execution (as `literal_execute` would). The queue is an alias of `jobs`, so that a
    statement on `jobs` may ask for the place of each of its rows (`mode`, `queue_seq`).
    """
    queue = jobs.alias("queue")
    in_mode = queue.c.mode == mode
    head = (
        select(func.min(queue.c.queue_seq))
        .where(queue.c.state == _sql_literal(State.QUEUED), in_mode)
        .correlate(jobs)
        .scalar_subquery()
    )
    out_of_queue = [_sql_literal(state) for state in _OUT_OF_QUEUE]
    left_early = (
        select(func.count())
        .select_from(queue)
        .where(
            queue.c.state.in_(out_of_queue),
            in_mode,
            queue.c.queue_seq > head,
            queue.c.queue_seq < queue_seq,
        )
        .correlate(jobs)
        .scalar_subquery()
    )
    return head, left_early


def _sql_literal(state: State) -> ColumnElement[str]:
    return literal_column(f"'{state.value}'", String)


def _get_visible_placed() -> Select[Any]:
    queued = jobs.c.state == _sql_literal(State.QUEUED)
    head, left_early = _queue_place(jobs.c.mode, jobs.c.queue_seq)
    # CASE evaluates the subqueries only for a queued job.
    return _GET_VISIBLE.add_columns(
        case((queued, head)).label("queue_head"), case((queued, left_early)).label("left_early")
    )


QUEUE_POSITION = select(*_queue_place(bindparam("mode"), bindparam("queue_seq")))
_GET_VISIBLE_PLACED = _get_visible_placed()


# The parameter `now` of every move: the time of its change (bound with the column's type, so
# that SQLite stores it as it stores the datetimes of the other statements).
_NOW = bindparam("now", type_=DateTime(timezone=True))


def _move_statement(target: State, *guards: ColumnElement[bool], **values: Any) -> Update:
    """The UPDATE that moves the jobs the guards select, from a state that may move to `target`."""
    sources = [_sql_literal(state) for state in sorted(sources_of(target))]
    return (
        update(jobs)
        .where(jobs.c.state.in_(sources), *guards)
        .values(state=target, updated_at=_NOW, **values)
        .returning(jobs)
    )


# A mode's next queue number, and the queued_at that goes with it: `now`, or the last one given
# when that is later (clocks of several processes differ).
_NEXT_SEQ = job_queues.c.last_seq + 1
_LAST_QUEUED_AT = job_queues.c.last_queued_at
_NEXT_QUEUED_AT = case((_LAST_QUEUED_AT > _NOW, _LAST_QUEUED_AT), else_=_NOW)


def _queue_statement() -> Update:
    """Takes the mode's next queue number and its queued_at (PostgreSQL): the update locks the
    mode's row until the transaction that queues the job commits."""
    return (
        update(job_queues)
        .where(job_queues.c.mode == bindparam("queue_mode"))
        .values(last_seq=_NEXT_SEQ, last_queued_at=_NEXT_QUEUED_AT)
        .returning(job_queues.c.last_seq, _LAST_QUEUED_AT)
    )


def _next_of_mode() -> tuple[ScalarSelect[Any], ScalarSelect[Any]]:
    """The queued_at and the queue number the job's mode gives next, read from its row by the
    statement that queues the job (SQLite): writers take turns there, and a trigger records
    them as taken (migration 0005)."""
    of_job = job_queues.c.mode == jobs.c.mode
    return (
        select(_NEXT_QUEUED_AT).where(of_job).scalar_subquery(),
        select(_NEXT_SEQ).where(of_job).scalar_subquery(),
    )


@lru_cache(maxsize=64)
def _lease_statement(modes: tuple[str, ...]) -> Update:
    """Leases the oldest due queued job of the modes: one statement per list of modes a worker
    asks for (few), whose modes are in its SQL, so that no execution expands a list of them."""
    oldest_due = (
        select(jobs.c.id)
        .where(
            jobs.c.state == State.QUEUED,
            or_(*(jobs.c.mode == mode for mode in modes)),
            or_(jobs.c.not_before.is_(None), jobs.c.not_before <= _NOW),
        )
        # queued_at follows queue_seq within a mode, and queue_seq breaks its ties.
        .order_by(jobs.c.queued_at, jobs.c.queue_seq)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return _move_statement(
        State.RUNNING,
        jobs.c.id == oldest_due,
        attempts=jobs.c.attempts + 1,
        lease_token=jobs.c.lease_token + 1,
        lease_expires_at=_LEASE_UNTIL,
        worker_id=bindparam("worker"),
        not_before=None,
        started_at=func.coalesce(jobs.c.started_at, _NOW),
    )


_LEASE_UNTIL = bindparam("lease_until", type_=DateTime(timezone=True))
# The job, while the lease of fencing token `token` holds it.
_LEASED = (_JOB_ID, jobs.c.state == State.RUNNING, jobs.c.lease_token == bindparam("token"))
_ERROR = {"error_code": bindparam("code"), "error_message": bindparam("message")}
_ENDED = {"completed_at": _NOW, "lease_expires_at": None}


def _queueing(queued_at: Any, queue_seq: Any) -> Update:
    """The move of a pending job whose hold is confirmed into its queue, at this place."""
    return _move_statement(
        State.QUEUED,
        _JOB_ID,
        jobs.c.state == State.PENDING,
        cost_credits=bindparam("cost"),
        billing=HoldStatus.HELD,
        queued_at=queued_at,
        queue_seq=queue_seq,
    )


def _placed(queueing: Update) -> Update:
    """The queueing, returning the job's `queue_head` and `left_early` too (see `_queue_place`).

    For SQLite, whose writers take turns, so that the statement sees every job queued before
    it. Whether its subqueries see the job it queues does not matter: every other queued job of
    the mode has a lower number than the one just taken, so the head is the job itself when
    they find none. A PostgreSQL statement reads the snapshot it began with, which misses a job
    queued by the transaction it waited for (on its mode's row): there, a second statement asks.
    SQLAlchemy writes a RETURNING clause's columns without their table, so the job's own are
    named in full here, apart from the subqueries' table (an alias of it).
    """
    mode, queue_seq = literal_column("jobs.mode"), literal_column("jobs.queue_seq")
    head, left_early = _queue_place(mode, queue_seq)
    return queueing.returning(
        func.coalesce(head, queue_seq).label("queue_head"), left_early.label("left_early")
    )


_QUEUE = _placed(_queueing(*_next_of_mode()))
# On PostgreSQL, the queue number is taken (its row locked) by the CTE of the statement that
# queues the job.
_TAKEN = _queue_statement().cte("taken")
_QUEUE_NEXT = _queueing(
    select(_TAKEN.c.last_queued_at).scalar_subquery(),
    select(_TAKEN.c.last_seq).scalar_subquery(),
)
_RECORD_PROGRESS = (
    update(jobs)
    .where(*_LEASED)
    .values(progress=bindparam("reached"), lease_expires_at=_LEASE_UNTIL, updated_at=_NOW)
    .returning(jobs)
)
_COMPLETE = _move_statement(
    State.COMPLETED,
    *_LEASED,
    progress=1.0,
    result_asset_id=bindparam("asset_id"),
    result=bindparam("result_json"),
    **_ENDED,
)
_REQUEUE = _move_statement(
    State.QUEUED,
    *_LEASED,
    not_before=bindparam("retry_at", type_=DateTime(timezone=True)),
    worker_id=None,
    lease_expires_at=None,
)
_FAIL = _move_statement(State.FAILED, *_LEASED, **_ENDED, **_ERROR)
# Its lease token stays, so that a running job's worker learns of it at its next heartbeat.
_CANCEL = _move_statement(
    State.CANCELED, _JOB_ID, jobs.c.account_id == bindparam("account"), **_ENDED
)
_SET_BILLING = (
    update(jobs)
    .where(_JOB_ID)
    .values(billing=bindparam("hold_status"), updated_at=_NOW)
    .returning(jobs)
)


class Queued(NamedTuple):
    """A job just queued, and its `queue_position` as the transaction that queued it saw it."""

    job: JobRow
    position: int | None


async def mark_queued(
    engine: AsyncEngine, job: JobRow, cost_credits: int, now: datetime
) -> Queued | None:
    """Queues a pending job behind the others of its mode, with the next number of its queue."""
    params = {"job_id": job.id, "cost": cost_credits}
    async with engine.begin() as connection:
        if connection.dialect.name != "postgresql":
            queued = await _move(connection, _QUEUE, now, **params)
            if not queued:
                return None
            (job,) = queued
            return Queued(job, _position(job, job.queue_head, job.left_early))
        queued = await _move(connection, _QUEUE_NEXT, now, queue_mode=job.mode, **params)
        if not queued:  # hands the number back, so that the mode's numbers keep no gap
            await connection.rollback()
            return None
        (job,) = queued
        # Read here, on the connection at hand, rather than by the caller on another one.
        place = await connection.execute(QUEUE_POSITION, queue_position_params(job))
    return Queued(job, _position(job, *place.one()))


async def fail_pending(
    engine: AsyncEngine, job_id: str, error: jobs_pb2.JobError, now: datetime
) -> JobRow | None:
    """Fails a pending job whose credits billing refused to hold."""
    failed = await _fail_pending(engine, HoldStatus.NONE, error, now, jobs.c.id == job_id)
    return failed[0] if failed else None


async def abandon_pending(
    engine: AsyncEngine, created_before: datetime, error: jobs_pb2.JobError, now: datetime
) -> list[JobRow]:
    """Fails the jobs still pending since before `created_before`, whose CreateJob was lost.

    A lost Reserve may have held their credits: they are marked held, for settling.
    """
    stale = jobs.c.created_at < created_before
    return await _fail_pending(engine, HoldStatus.HELD, error, now, stale)


async def _fail_pending(
    engine: AsyncEngine,
    billing: HoldStatus,
    error: jobs_pb2.JobError,
    now: datetime,
    *guards: ColumnElement[bool],
) -> list[JobRow]:
    """Fails pending jobs and frees their idempotency keys: they created nothing, so a request
    with the same key may try again."""
    statement = _move_statement(
        State.FAILED, jobs.c.state == State.PENDING, *guards, billing=billing, **_ENDED, **_ERROR
    )
    async with engine.begin() as connection:
        failed = await _move(connection, statement, now, **_error_params(error))
        await _free_keys(connection, [job.id for job in failed])
    return failed


async def lease_next(
    engine: AsyncEngine, modes: Sequence[str], worker_id: str, lease_for: timedelta, now: datetime
) -> JobRow | None:
    """Leases the oldest due queued job of the modes, in one statement that concurrent callers
    cannot both win: PostgreSQL skips rows another lease has locked, SQLite runs one writer."""
    statement = _lease_statement(tuple(modes))
    return await _move_one(engine, statement, now, worker=worker_id, lease_until=now + lease_for)


async def record_progress(
    engine: AsyncEngine,
    job_id: str,
    token: int,
    progress: float,
    lease_for: timedelta,
    now: datetime,
) -> JobRow | None:
    """Records a heartbeat of the lease holder and extends its lease; None when it holds none."""
    params = {
        "job_id": job_id,
        "token": token,
        "reached": progress,
        "lease_until": now + lease_for,
        "now": now,
    }
    async with statements_alone(engine) as connection:
        return (await connection.execute(_RECORD_PROGRESS, params)).one_or_none()


async def complete(
    engine: AsyncEngine, job_id: str, token: int, result: jobs_pb2.JobResult, now: datetime
) -> JobRow | None:
    result_json = json_format.MessageToJson(result, indent=None)
    params = {"asset_id": result.asset_id, "result_json": result_json}
    return await _move_one(engine, _COMPLETE, now, job_id=job_id, token=token, **params)


async def requeue(
    engine: AsyncEngine, job_id: str, token: int, not_before: datetime, now: datetime
) -> JobRow | None:
    return await _move_one(engine, _REQUEUE, now, job_id=job_id, token=token, retry_at=not_before)


async def fail(
    engine: AsyncEngine, job_id: str, token: int, error: jobs_pb2.JobError, now: datetime
) -> JobRow | None:
    params = _error_params(error)
    return await _move_one(engine, _FAIL, now, job_id=job_id, token=token, **params)


async def cancel(
    engine: AsyncEngine,
    job_id: str,
    account_id: str,
    now: datetime,
    *,
    free_idempotency_key: bool = False,
) -> JobRow | None:
    """Cancels a queued or running job; its lease token stays so its worker learns of it. With
    `free_idempotency_key`, the key that created the job is freed in the same transaction."""
    async with engine.begin() as connection:
        moved = await _move(connection, _CANCEL, now, job_id=job_id, account=account_id)
        if free_idempotency_key:
            await _free_keys(connection, [job.id for job in moved])
    return moved[0] if moved else None


async def _free_keys(connection: AsyncConnection, job_ids: list[str]) -> None:
    """Frees the idempotency keys that created the jobs: a request with one may try again."""
    if job_ids:
        await connection.execute(
            delete(idempotency_keys).where(idempotency_keys.c.job_id.in_(job_ids))
        )


# The states a job may be canceled from when its deadline passes.
_DEADLINE_STATES = sorted(sources_of(State.CANCELED))


async def cancel_overdue(
    engine: AsyncEngine, error: jobs_pb2.JobError, now: datetime
) -> list[JobRow]:
    """Cancels the queued and running jobs whose deadline has passed, with `error`; as a cancel,
    the lease token stays so that a running job's worker learns of it at its next heartbeat."""
    statement = _move_statement(State.CANCELED, jobs.c.deadline_at <= _NOW, **_ENDED, **_ERROR)
    async with engine.begin() as connection:
        return await _move(connection, statement, now, **_error_params(error))


async def next_deadline(engine: AsyncEngine) -> datetime | None:
    """The earliest deadline of a queued or running job: one index seek per state."""
    earliest = [
        select(func.min(jobs.c.deadline_at))
        .where(jobs.c.state == state, jobs.c.deadline_at.is_not(None))
        .scalar_subquery()
        for state in _DEADLINE_STATES
    ]
    async with engine.connect() as connection:
        found = (await connection.execute(select(*earliest))).one()
    return min((as_utc(deadline) for deadline in found if deadline is not None), default=None)


async def set_billing(
    engine: AsyncEngine, job_id: str, billing: HoldStatus, now: datetime
) -> JobRow:
    params = {"job_id": job_id, "hold_status": billing, "now": now}
    async with statements_alone(engine) as connection:
        return (await connection.execute(_SET_BILLING, params)).one()


async def expire_leases(
    engine: AsyncEngine, max_attempts: int, error: jobs_pb2.JobError, now: datetime
) -> list[JobRow]:
    """Queues again the running jobs whose lease expired, or fails those out of attempts."""
    expired = (jobs.c.state == State.RUNNING, jobs.c.lease_expires_at < _NOW)
    released = {"worker_id": None, "lease_expires_at": None}
    requeue = _move_statement(State.QUEUED, *expired, jobs.c.attempts < max_attempts, **released)
    fail = _move_statement(
        State.FAILED,
        *expired,
        jobs.c.attempts >= max_attempts,
        completed_at=_NOW,
        **released,
        **_ERROR,
    )
    async with engine.begin() as connection:
        requeued = await _move(connection, requeue, now)
        failed = await _move(connection, fail, now, **_error_params(error))
    return requeued + failed


async def unsettled(engine: AsyncEngine) -> list[JobRow]:
    """Ended jobs whose hold billing has not yet confirmed captured or released."""
    ended = jobs.c.state.in_(sorted(TERMINAL))
    query = select(jobs).where(jobs.c.billing == HoldStatus.HELD, ended)
    async with engine.connect() as connection:
        return list((await connection.execute(query)).all())


async def clear_due_retries(engine: AsyncEngine, now: datetime) -> list[JobRow]:
    """The queued jobs whose backoff just ended, which no wake-up announced yet."""
    statement = (
        update(jobs)
        .where(jobs.c.state == State.QUEUED, jobs.c.not_before <= now)
        .values(not_before=None)
        .returning(*jobs.c)
    )
    async with engine.begin() as connection:
        return list((await connection.execute(statement)).all())


def _error_params(error: jobs_pb2.JobError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}


async def _move_one(
    engine: AsyncEngine, statement: Update, now: datetime, **params: Any
) -> JobRow | None:
    async with engine.begin() as connection:
        moved = await _move(connection, statement, now, **params)
    return moved[0] if moved else None


async def _move(
    connection: AsyncConnection, statement: Update, now: datetime, **params: Any
) -> list[JobRow]:
    """Runs a move (a `_move_statement`) with its parameters: in the same statement, the jobs
    it moved get their status events (`_with_events` on PostgreSQL, a trigger on SQLite)."""
    params["now"] = now
    if connection.dialect.name == "postgresql":
        statement = _with_events(statement)
    moved = list((await connection.execute(statement, params)).all())
    if moved:
        await _enqueue_webhooks(connection, moved, now)
    return moved


@lru_cache(maxsize=32)
def _with_events(move: Update) -> Select[Any]:
    """The move and the inserts of its status events, as data-modifying CTEs: one round trip
    where two statements took two (SQLite has no data-modifying CTE)."""
    moved = move.cte("moved")
    status = literal_column("'status'", String)
    events = (
        insert(job_events)
        .from_select(
            ["job_id", "type", "state", "progress", "created_at"],
            select(moved.c.id, status, moved.c.state, moved.c.progress, _NOW),
        )
        .cte("events")
    )
    return select(moved).add_cte(events)


async def _enqueue_webhooks(
    connection: AsyncConnection, moved: Sequence[JobRow], now: datetime
) -> None:
    for job in moved:
        event = webhook_event_of(job)
        if event is None:
            continue
        message = job_message(job)
        sent_before = select(func.count()).where(webhook_deliveries.c.job_id == job.id)
        await connection.execute(
            insert(webhook_deliveries).values(
                id=new_id("msg"),
                job_id=job.id,
                account_id=job.account_id,
                sequence=sent_before.scalar_subquery() + 1,
                event_type=event,
                url=message.spec.webhook_url,
                job=json_format.MessageToJson(message, indent=None),
                state=DeliveryState.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )


def _next_in_line() -> ColumnElement[bool]:
    """A pending delivery no earlier delivery of its job waits before."""
    earlier = webhook_deliveries.alias("earlier")
    waiting_before = exists().where(
        earlier.c.job_id == webhook_deliveries.c.job_id,
        earlier.c.sequence < webhook_deliveries.c.sequence,
        earlier.c.state == DeliveryState.PENDING,
    )
    return (webhook_deliveries.c.state == DeliveryState.PENDING) & ~waiting_before


def _unlocked(now: datetime) -> ColumnElement[bool]:
    locked_until = webhook_deliveries.c.locked_until
    return or_(locked_until.is_(None), locked_until <= now)


async def claim_delivery(
    engine: AsyncEngine, lock_for: timedelta, now: datetime
) -> DeliveryRow | None:
    """Claims the next attempt of the delivery due first, at the head of its job's line, in one
    statement that concurrent dispatchers cannot both win (as `lease_next`). The claim counts
    the attempt; it is held for `lock_for`, after which a crashed dispatcher's claim is free."""
    due_first = (
        select(webhook_deliveries.c.id)
        .where(_next_in_line(), webhook_deliveries.c.next_attempt_at <= now, _unlocked(now))
        .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == due_first)
        .values(
            attempts=webhook_deliveries.c.attempts + 1,
            locked_until=now + lock_for,
            updated_at=now,
        )
        .returning(*webhook_deliveries.c)
    )
    async with engine.begin() as connection:
        return (await connection.execute(statement)).one_or_none()


async def next_delivery_time(engine: AsyncEngine, now: datetime) -> datetime | None:
    """When a delivery next falls due: the earliest attempt of one at the head of its job's line,
    or the end of a claim that its dispatcher may not finish."""
    next_attempt = select(func.min(webhook_deliveries.c.next_attempt_at)).where(
        _next_in_line(), _unlocked(now)
    )
    claim_end = select(func.min(webhook_deliveries.c.locked_until)).where(
        _next_in_line(), webhook_deliveries.c.locked_until > now
    )
    async with engine.connect() as connection:
        times = [await connection.scalar(next_attempt), await connection.scalar(claim_end)]
    return min((as_utc(time) for time in times if time is not None), default=None)


async def record_attempt(
    engine: AsyncEngine,
    claimed: DeliveryRow,
    state: DeliveryState,
    now: datetime,
    *,
    next_attempt_at: datetime | None = None,
    status: int | None = None,
    error: str | None = None,
) -> bool:
    """Records how the claimed attempt went; False when the claim had lapsed and another
    dispatcher took the delivery over, whose record stands."""
    statement = (
        update(webhook_deliveries)
        .where(*_claimed_as(claimed))
        .values(
            state=state,
            next_attempt_at=next_attempt_at or claimed.next_attempt_at,
            locked_until=None,
            last_status=status,
            last_error=error,
            updated_at=now,
        )
    )
    async with engine.begin() as connection:
        return (await connection.execute(statement)).rowcount == 1


async def release_claims(engine: AsyncEngine, claimed: Sequence[DeliveryRow]) -> None:
    """Frees the claims of attempts cut short, so that a dispatcher makes them again at once."""
    async with engine.begin() as connection:
        for delivery in claimed:
            await connection.execute(
                update(webhook_deliveries).where(*_claimed_as(delivery)).values(locked_until=None)
            )


def _claimed_as(delivery: DeliveryRow) -> tuple[ColumnElement[bool], ...]:
    """The delivery, still pending under this claim: no other dispatcher took it over since."""
    return (
        webhook_deliveries.c.id == delivery.id,
        webhook_deliveries.c.attempts == delivery.attempts,
        webhook_deliveries.c.state == DeliveryState.PENDING,
    )


async def deliveries_of(engine: AsyncEngine, job_id: str) -> list[DeliveryRow]:
    """The job's webhook deliveries, in order."""
    query = (
        select(webhook_deliveries)
        .where(webhook_deliveries.c.job_id == job_id)
        .order_by(webhook_deliveries.c.sequence)
    )
    async with engine.connect() as connection:
        return list((await connection.execute(query)).all())
