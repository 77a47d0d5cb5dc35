"""The store's idempotency keys: claimed with the job they create, freed when it fails early."""

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.timestamps import utcnow
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import domain, store
from magicpixels.services.jobs.domain import HoldStatus, State
from magicpixels.services.jobs.store import JobRow
from tests.jobs.conftest import ACCOUNT, text_to_image

KEY = "key-1"
REFUSED = jobs_pb2.JobError(code="insufficient_credits", message="not enough credits")


async def insert(engine: AsyncEngine, now: datetime) -> JobRow | None:
    spec = text_to_image()
    claim = domain.idempotency_claim(KEY, True, spec)
    return await store.insert_pending(engine, ACCOUNT, True, spec, claim, now)


async def test_a_claimed_key_inserts_no_second_job_for_a_day(engine: AsyncEngine) -> None:
    claimed_at = utcnow()
    first = await insert(engine, claimed_at)

    within = await insert(engine, claimed_at + domain.IDEMPOTENCY_WINDOW - timedelta(seconds=1))
    after = await insert(engine, claimed_at + domain.IDEMPOTENCY_WINDOW + timedelta(seconds=1))

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

    claim = domain.idempotency_claim(KEY, True, text_to_image())
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
