"""The store: idempotency keys, claimed with the job they create and freed when it fails early;
queue positions, which agree with the order of the leases through any sequence of moves; a move
and its status event in one statement."""

import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core import idempotency
from magicpixels.core.timestamps import as_utc, utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import store
from magicpixels.services.jobs.domain import HoldStatus, State
from magicpixels.services.jobs.store import JobRow
from tests.jobs.conftest import ACCOUNT, claim_of, text_to_image

KEY = "key-1"
REFUSED = jobs_pb2.JobError(code="insufficient_credits", message="not enough credits")


async def insert(engine: AsyncEngine, now: datetime) -> JobRow | None:
    spec = text_to_image()
    claim = claim_of(True, spec, key=KEY)
    return await store.insert_pending(engine, ACCOUNT, True, spec, claim, now)


async def test_a_claimed_key_inserts_no_second_job_for_a_day(engine: AsyncEngine) -> None:
    claimed_at = utcnow()
    first = await insert(engine, claimed_at)

    within = await insert(engine, claimed_at + idempotency.WINDOW - timedelta(seconds=1))
    after = await insert(engine, claimed_at + idempotency.WINDOW + timedelta(seconds=1))

    assert first is not None
    assert within is None
    # Past its window the key is free: the new request's claim replaces the old one.
    assert after is not None
    assert after.id != first.id
    now_claimed = await store.claimed(engine, ACCOUNT, KEY)
    assert now_claimed is not None
    assert now_claimed.id == after.id


async def test_the_claim_answers_its_job_and_request_hash(engine: AsyncEngine) -> None:
    job = await insert(engine, utcnow())

    found = await store.claimed(engine, ACCOUNT, KEY)

    claim = claim_of(True, text_to_image(), key=KEY)
    assert job is not None
    assert found is not None
    assert claim is not None
    assert (found.id, found.state) == (job.id, State.PENDING)
    assert found.request_hash == claim.request_hash
    assert await store.claimed(engine, "acct_other", KEY) is None


async def test_a_refused_job_frees_its_key(engine: AsyncEngine) -> None:
    job = await insert(engine, utcnow())
    assert job is not None

    failed = await store.fail_pending(engine, job.id, REFUSED, utcnow())

    assert failed is not None
    assert (failed.state, failed.billing) == (State.FAILED, HoldStatus.NONE)
    assert await store.claimed(engine, ACCOUNT, KEY) is None
    assert await insert(engine, utcnow()) is not None


async def test_an_abandoned_job_frees_its_key_and_awaits_settling(engine: AsyncEngine) -> None:
    created = utcnow()
    job = await insert(engine, created)
    assert job is not None

    young = await store.abandon_pending(engine, created, REFUSED, created)
    [abandoned] = await store.abandon_pending(
        engine, created + timedelta(seconds=1), REFUSED, created
    )

    assert young == []
    assert (abandoned.id, abandoned.state) == (job.id, State.FAILED)
    # Its lost Reserve may have held credits: it is settled (released) like any ended job.
    assert abandoned.billing == HoldStatus.HELD
    assert await store.unsettled(engine) == [abandoned]
    assert await store.claimed(engine, ACCOUNT, KEY) is None


async def test_a_job_that_left_pending_is_not_abandoned(engine: AsyncEngine) -> None:
    created = utcnow()
    job = await insert(engine, created)
    assert job is not None
    await store.mark_queued(engine, job, 1, created)

    abandoned = await store.abandon_pending(
        engine, created + timedelta(seconds=1), REFUSED, created
    )

    assert abandoned == []
    current = await store.get_job(engine, job.id)
    assert current is not None
    assert (current.state, current.billing) == (State.QUEUED, HoldStatus.HELD)


async def test_queueing_an_abandoned_job_hands_its_number_back(engine: AsyncEngine) -> None:
    now = utcnow()
    abandoned = await insert(engine, now)
    assert abandoned is not None
    await store.abandon_pending(engine, now + timedelta(seconds=1), REFUSED, now)

    assert await store.mark_queued(engine, abandoned, 1, now) is None

    spec = text_to_image()
    job = await store.insert_pending(engine, ACCOUNT, True, spec, None, now)
    assert job is not None
    queued = await store.mark_queued(engine, job, 1, now)
    assert queued is not None
    assert queued.job.queue_seq == 1  # the mode's numbers keep no gap
    assert queued.position == 0
    current = await store.get_job(engine, abandoned.id)
    assert current is not None
    assert (current.state, current.queue_seq) == (State.FAILED, None)


async def test_a_move_and_its_status_event_are_one_statement(engine: AsyncEngine) -> None:
    """On PostgreSQL by a data-modifying CTE, on SQLite by a trigger (migration 0005), which also
    takes the queue number: queueing is one statement there (PostgreSQL reads the position in
    a second one), and each lease or completion is one."""
    now = utcnow()
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    first = await store.insert_pending(engine, ACCOUNT, True, text_to_image(), None, now)
    second = await store.insert_pending(engine, ACCOUNT, True, text_to_image(), None, now)
    assert first is not None
    assert second is not None
    statements.clear()
    queued = [await store.mark_queued(engine, job, 1, now) for job in (first, second)]
    queueing = len(statements)
    statements.clear()
    leased = await store.lease_next(engine, ["text_to_image"], "w", timedelta(seconds=30), now)
    assert leased is not None
    await store.complete(engine, leased.id, leased.lease_token, _RESULT, now)

    assert queueing == (4 if engine.dialect.name == "postgresql" else 2)
    assert len(statements) == 2
    assert [(q.job.queue_seq, q.position) for q in queued if q] == [(1, 0), (2, 1)]
    events = select(store.job_events.c.job_id, store.job_events.c.state).order_by("id")
    async with engine.connect() as connection:
        written = [tuple(row) for row in await connection.execute(events)]
        numbers = select(store.job_queues.c.last_seq, store.job_queues.c.last_queued_at)
        last = (
            await connection.execute(numbers.where(store.job_queues.c.mode == "text_to_image"))
        ).one()
    assert written == [
        (first.id, State.QUEUED),
        (second.id, State.QUEUED),
        (first.id, State.RUNNING),
        (first.id, State.COMPLETED),
    ]
    assert (last.last_seq, as_utc(last.last_queued_at)) == (2, now)


async def test_queue_positions_agree_with_the_lease_order_through_any_moves(
    engine: AsyncEngine,
) -> None:
    """Random creates, leases, cancels, retries and completions in two modes; after each, every
    queued job's position is its rank in the order leases take them (queued_at, then number),
    and a lease takes the job at position 0 of its mode."""
    moves = random.Random(12)
    now = utcnow()
    leased: dict[str, JobRow] = {}
    for _ in range(120):
        now += timedelta(milliseconds=1)
        mode = moves.choice(["text_to_image", "text_to_audio"])
        move = moves.choice(["create", "create", "create", "lease", "lease", "cancel", "end"])
        queued = await _queued(engine)
        if move == "create":
            spec = jobs_pb2.JobSpec(mode=jobs_pb2.JobMode.Value(f"JOB_MODE_{mode.upper()}"))
            job = await store.insert_pending(engine, ACCOUNT, True, spec, None, now)
            assert job is not None
            await store.mark_queued(engine, job, 1, now)
        elif move == "lease":
            head = [job.id for job in queued if job.mode == mode][:1]
            job = await store.lease_next(engine, [mode], "worker", timedelta(seconds=30), now)
            assert ([job.id] if job else []) == head
            if job:
                leased[job.id] = job
        elif move == "cancel" and queued + list(leased.values()):
            job = moves.choice(queued + list(leased.values()))
            await store.cancel(engine, job.id, ACCOUNT, now)
            leased.pop(job.id, None)
        elif move == "end" and leased:
            job = leased.pop(moves.choice(sorted(leased)))
            if moves.random() < 0.5:  # a retry goes back to its place, due at once
                await store.requeue(engine, job.id, job.lease_token, now, now)
            else:
                await store.complete(engine, job.id, job.lease_token, _RESULT, now)
        await _positions_agree(engine)


_RESULT = jobs_pb2.JobResult(asset_id="asset_1", content_type="image/png")


async def _queued(engine: AsyncEngine) -> list[JobRow]:
    """The queued jobs in the order leases take them."""
    query = select(store.jobs).where(store.jobs.c.state == State.QUEUED)
    async with engine.connect() as connection:
        found = list((await connection.execute(query)).all())
    return sorted(found, key=lambda job: (as_utc(job.queued_at), job.queue_seq))


async def _positions_agree(engine: AsyncEngine) -> None:
    queued = await _queued(engine)
    positions = {}
    for job in queued:
        same_mode = [other.id for other in queued if other.mode == job.mode]
        positions[job.id] = same_mode.index(job.id)
        assert await store.queue_position(engine, job) == positions[job.id]
    # GetJob's read places each job as `queue_position` does, and a job out of the queue nowhere.
    async with engine.connect() as connection:
        every = (await connection.execute(select(store.jobs.c.id))).scalars().all()
    for job_id in every:
        found = await store.get_visible_placed(engine, job_id, ACCOUNT)
        assert found is not None
        job, position = found
        assert (job.id, position) == (job_id, positions.get(job_id))
