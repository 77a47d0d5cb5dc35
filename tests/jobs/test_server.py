import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from magicpixels.core.errors import remote_error
from magicpixels.core.service import Mesh
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.services.jobs import domain, store
from tests.conftest import Database
from tests.jobs.conftest import (
    ACCOUNT,
    Billing,
    jobs_server,
    jobs_settings,
    reason_of,
    text_to_image,
)
from tests.support import LeaseWaits

Stub = jobs_pb2_grpc.JobsServiceStub
RESULT = jobs_pb2.JobResult(
    asset_id="asset_result", content_type="image/png", width=1024, height=1024
)
LEASE_LOST = (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
KEY = "create-lighthouse-1"
KEY_IN_USE = (grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE")


async def create(
    jobs: Stub, account_id: str = ACCOUNT, livemode: bool = True, **fields: Any
) -> jobs_pb2.Job:
    spec = text_to_image(**fields)
    return await jobs.CreateJob(
        jobs_pb2.CreateJobRequest(account_id=account_id, livemode=livemode, spec=spec)
    )


async def create_with_key(
    jobs: Stub, key: str = KEY, account_id: str = ACCOUNT, livemode: bool = True, **fields: Any
) -> tuple[jobs_pb2.Job, bool]:
    """Creates a job with an Idempotency-Key: the job answered, and whether it was replayed."""
    request = jobs_pb2.CreateJobRequest(
        account_id=account_id, livemode=livemode, spec=text_to_image(**fields), idempotency_key=key
    )
    call = jobs.CreateJob(request)
    job = await call
    trailing = await call.trailing_metadata()
    return job, trailing.get("idempotent-replayed") == "true"


async def lease(jobs: Stub, wait: float = 0.0, **call: Any) -> jobs_pb2.LeaseJobResponse:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=wait))
    request = jobs_pb2.LeaseJobRequest(
        worker_id="worker-1", modes=[jobs_pb2.JOB_MODE_TEXT_TO_IMAGE], wait=duration
    )
    return await jobs.LeaseJob(request, **call)


async def progress(
    jobs: Stub, job_id: str, token: int, value: float
) -> jobs_pb2.ReportProgressResponse:
    return await jobs.ReportProgress(
        jobs_pb2.ReportProgressRequest(job_id=job_id, lease_token=token, progress=value)
    )


async def complete(
    jobs: Stub, job_id: str, token: int, result: jobs_pb2.JobResult = RESULT, **call: Any
) -> jobs_pb2.Job:
    return await jobs.CompleteJob(
        jobs_pb2.CompleteJobRequest(job_id=job_id, lease_token=token, result=result), **call
    )


async def fail(
    jobs: Stub, job_id: str, token: int, *, retryable: bool, **call: Any
) -> jobs_pb2.Job:
    error = jobs_pb2.JobError(code="backend_error", message="the backend crashed")
    request = jobs_pb2.FailJobRequest(
        job_id=job_id, lease_token=token, error=error, retryable=retryable
    )
    return await jobs.FailJob(request, **call)


async def cancel(jobs: Stub, job_id: str, account_id: str = ACCOUNT, **call: Any) -> jobs_pb2.Job:
    return await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job_id, account_id=account_id), **call)


async def get(jobs: Stub, job_id: str, account_id: str = ACCOUNT) -> jobs_pb2.Job:
    return await jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id, account_id=account_id))


async def listed(jobs: Stub, account_id: str = ACCOUNT, **filters: Any) -> list[str]:
    request = jobs_pb2.ListJobsRequest(account_id=account_id, livemode=True, **filters)
    return [job.id for job in (await jobs.ListJobs(request)).jobs]


async def refusal(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), reason_of(caught.value)


async def events_of(engine: AsyncEngine, job_id: str) -> list[str]:
    """The states of the job's status events, oldest first."""
    query = (
        select(store.job_events.c.state)
        .where(store.job_events.c.job_id == job_id)
        .order_by(store.job_events.c.id)
    )
    async with engine.connect() as connection:
        return list((await connection.scalars(query)).all())


async def test_create_holds_the_price_and_queues_the_job(jobs: Stub, billing: Billing) -> None:
    await billing.grant(5)

    job = await create(jobs, metadata={"order": "42"})

    assert job.state == jobs_pb2.JOB_STATE_QUEUED
    assert (job.cost_credits, job.attempts, job.progress) == (1, 0, 0.0)
    assert job.HasField("queue_position")
    assert job.queue_position == 0
    assert (job.spec.width, job.spec.height, job.spec.output_format) == (1024, 1024, "png")
    assert job.spec.HasField("seed")
    assert dict(job.spec.metadata) == {"order": "42"}
    assert job.HasField("create_time")
    assert not job.HasField("start_time")
    assert not job.HasField("deadline_time")
    assert await billing.held() == [job.id]
    assert await billing.balance() == (4, 1)
    assert await get(jobs, job.id) == job


async def test_queue_position_counts_the_jobs_ahead(jobs: Stub, billing: Billing) -> None:
    await billing.grant(3)
    created = [await create(jobs) for _ in range(3)]

    positions = [(await get(jobs, job.id)).queue_position for job in created]

    assert positions == [0, 1, 2]


async def test_test_mode_jobs_cost_nothing(jobs: Stub, billing: Billing) -> None:
    job = await create(jobs, livemode=False)

    assert (job.state, job.cost_credits, job.livemode) == (jobs_pb2.JOB_STATE_QUEUED, 0, False)
    assert await billing.held() == []


async def test_an_account_has_only_so_many_unended_test_jobs(
    mesh: Mesh, database: Database, billing: Billing
) -> None:
    """They cost nothing and share the workers with paid jobs: a security review queued 60 of
    them ahead of another account's paid one. A replay makes nothing, so it passes; a live job
    is not counted, nor limited."""
    async with jobs_server(mesh, jobs_settings(database, max_unended_test_jobs=2)) as jobs:
        await billing.grant(1)
        first, _ = await create_with_key(jobs, livemode=False)
        await create(jobs, livemode=False)

        refused = await refusal(create(jobs, livemode=False))
        replayed, was_replayed = await create_with_key(jobs, livemode=False)
        live = await create(jobs)
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=first.id, account_id=ACCOUNT))
        after_one_ended = await create(jobs, livemode=False)

    assert refused == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert (replayed.id, was_replayed) == (first.id, True)
    assert live.livemode
    assert after_one_ended.state == jobs_pb2.JOB_STATE_QUEUED


async def test_test_jobs_created_at_once_are_never_admitted_past_the_limit(
    mesh: Mesh, database: Database, billing: Billing
) -> None:
    """Counted after their insert, creates at once may be refused one too many, never
    admitted one too many; the refused leave nothing visible."""
    async with jobs_server(mesh, jobs_settings(database, max_unended_test_jobs=3)) as jobs:
        answers = await asyncio.gather(
            *(create(jobs, livemode=False) for _ in range(12)), return_exceptions=True
        )
        listed = await jobs.ListJobs(
            jobs_pb2.ListJobsRequest(account_id=ACCOUNT, livemode=False, page_size=100)
        )

    admitted = [answer for answer in answers if isinstance(answer, jobs_pb2.Job)]
    assert len(admitted) <= 3
    assert sorted(job.id for job in listed.jobs) == sorted(job.id for job in admitted)


async def test_insufficient_credits_pass_through_and_the_job_stays_invisible(
    jobs: Stub, billing: Billing
) -> None:
    refused = await refusal(create(jobs))

    assert refused == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    assert await billing.held() == []
    assert await listed(jobs) == []
    assert not (await lease(jobs)).HasField("lease")


async def test_an_invalid_spec_holds_nothing(jobs: Stub, billing: Billing) -> None:
    await billing.grant(5)

    refused = await refusal(create(jobs, width=1001))

    assert refused == (grpc.StatusCode.INVALID_ARGUMENT, "PARAMETER_INVALID")
    assert await billing.held() == []
    assert await billing.balance() == (5, 0)


async def test_a_deadline_is_set_from_the_creation_time(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)

    job = await create(jobs, deadline_seconds=600)

    assert job.spec.deadline_seconds == 600
    lasts = job.deadline_time.ToDatetime() - job.create_time.ToDatetime()
    assert lasts == timedelta(seconds=600)


async def test_quote_validates_and_prices_without_holding(jobs: Stub, billing: Billing) -> None:
    await billing.grant(5)
    request = jobs_pb2.QuoteJobRequest(account_id=ACCOUNT, livemode=True, spec=text_to_image())

    quote = await jobs.QuoteJob(request)
    request.spec.steps = 0
    refused = await refusal(jobs.QuoteJob(request))

    assert quote.mode == jobs_pb2.JOB_MODE_TEXT_TO_IMAGE
    assert (quote.cost_credits, quote.available_credits, quote.sufficient) == (1, 5, True)
    assert refused == (grpc.StatusCode.INVALID_ARGUMENT, "PARAMETER_INVALID")
    assert await billing.held() == []
    assert await billing.balance() == (5, 0)


async def test_a_waiting_lease_is_woken_by_a_new_job(
    jobs: Stub, billing: Billing, monkeypatch: pytest.MonkeyPatch
) -> None:
    await billing.grant(1)
    waits = LeaseWaits(monkeypatch)
    waiting = asyncio.create_task(lease(jobs, wait=20, timeout=30))
    await waits.started.wait()  # the lease found the queue empty

    job = await create(jobs)
    leased = await waiting

    assert waits.ended == ["woken"]  # not the end of its 20 s wait
    assert leased.lease.job.id == job.id
    assert leased.lease.job.state == jobs_pb2.JOB_STATE_RUNNING


async def test_a_lease_without_work_answers_no_lease(jobs: Stub, billing: Billing) -> None:
    response = await lease(jobs, wait=0.2)

    assert not response.HasField("lease")


async def test_lease_progress_and_completion_capture_once(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    job = await create(jobs)

    held = (await lease(jobs)).lease
    heartbeat = await progress(jobs, job.id, held.token, 0.5)
    running = await get(jobs, job.id)
    completed = await complete(jobs, job.id, held.token)

    assert (held.job.attempts, held.job.HasField("queue_position")) == (1, False)
    assert not heartbeat.canceled
    assert heartbeat.HasField("lease_expire_time")
    assert (running.state, running.progress) == (jobs_pb2.JOB_STATE_RUNNING, 0.5)
    assert (completed.state, completed.progress) == (jobs_pb2.JOB_STATE_COMPLETED, 1.0)
    assert completed.result == RESULT
    assert completed.HasField("start_time")
    assert completed.HasField("complete_time")
    await billing.settle_to([job.id], [])
    assert await billing.balance() == (0, 0)


async def test_a_repeated_completion_answers_the_job_and_changes_nothing(
    jobs: Stub, billing: Billing, engine: AsyncEngine
) -> None:
    await billing.grant(1)
    job = await create(jobs)
    held = (await lease(jobs)).lease
    completed = await complete(jobs, job.id, held.token)

    # The worker did not get the answer and completes again, as it did.
    again = await complete(jobs, job.id, held.token)
    other_result = jobs_pb2.JobResult(asset_id="asset_other", content_type="image/png")
    different = await refusal(complete(jobs, job.id, held.token, other_result))
    other_lease = await refusal(complete(jobs, job.id, held.token + 1))

    assert again == completed
    assert different == other_lease == LEASE_LOST
    assert await events_of(engine, job.id) == ["queued", "running", "completed"]
    await billing.settle_to([job.id], [])
    assert await billing.balance() == (0, 0)


async def test_ending_a_job_does_not_wait_for_billing(jobs: Stub, billing: Billing) -> None:
    await billing.grant(3)
    completed, failed, canceled = [await create(jobs) for _ in range(3)]
    first, second = (await lease(jobs)).lease, (await lease(jobs)).lease

    async with billing.hung():
        # Billing never answers: each call still answers within its caller's short deadline.
        ended = [
            await complete(jobs, completed.id, first.token, timeout=3),
            await fail(jobs, failed.id, second.token, retryable=False, timeout=3),
            await cancel(jobs, canceled.id, timeout=3),
        ]
    await billing.restart()

    states = [jobs_pb2.JobState.Name(job.state) for job in ended]
    assert states == ["JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELED"]
    await billing.settle_to([completed.id], [failed.id, canceled.id])
    assert await billing.balance() == (2, 0)


async def test_an_expired_lease_is_leased_again_and_the_old_token_refused(
    mesh: Mesh, database: Database, billing: Billing
) -> None:
    await billing.grant(1)
    async with jobs_server(mesh, jobs_settings(database, lease_seconds=0.5)) as jobs:
        job = await create(jobs)
        first = (await lease(jobs)).lease
        # The worker goes silent: the reconciler queues the job again and wakes this call.
        second = (await lease(jobs, wait=10)).lease
        completion = await refusal(complete(jobs, job.id, first.token))
        heartbeat = await refusal(progress(jobs, job.id, first.token, 0.9))

    assert second.job.id == job.id
    assert (second.token, second.job.attempts) == (first.token + 1, 2)
    assert completion == heartbeat == LEASE_LOST
    assert await billing.settled() == ([], [])
    assert await billing.balance() == (0, 1)


async def test_a_retryable_failure_is_retried_then_fails_for_good(
    mesh: Mesh, database: Database, billing: Billing
) -> None:
    await billing.grant(1)
    async with jobs_server(mesh, jobs_settings(database, max_attempts=2)) as jobs:
        job = await create(jobs)
        first = (await lease(jobs)).lease
        retried = await fail(jobs, job.id, first.token, retryable=True)
        # Woken when the backoff has passed.
        second = (await lease(jobs, wait=10)).lease
        failed = await fail(jobs, job.id, second.token, retryable=True)
        await billing.settle_to([], [job.id])

    assert (retried.state, retried.HasField("error")) == (jobs_pb2.JOB_STATE_QUEUED, False)
    assert (second.job.id, second.job.attempts) == (job.id, 2)
    assert (failed.state, failed.error.code) == (jobs_pb2.JOB_STATE_FAILED, "backend_error")
    assert await billing.balance() == (1, 0)


async def test_a_permanent_failure_fails_at_once(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    job = await create(jobs)
    held = (await lease(jobs)).lease

    failed = await fail(jobs, job.id, held.token, retryable=False)

    assert (failed.state, failed.attempts) == (jobs_pb2.JOB_STATE_FAILED, 1)
    assert failed.error == jobs_pb2.JobError(code="backend_error", message="the backend crashed")
    await billing.settle_to([], [job.id])
    assert await billing.balance() == (1, 0)


async def test_cancel_releases_and_an_ended_job_is_not_cancelable(
    jobs: Stub, billing: Billing
) -> None:
    await billing.grant(2)
    oldest = await create(jobs)
    queued = await create(jobs)
    oldest_lease = (await lease(jobs)).lease
    await complete(jobs, oldest.id, oldest_lease.token)

    canceled = await cancel(jobs, queued.id)
    again = await refusal(cancel(jobs, queued.id))
    completed = await refusal(cancel(jobs, oldest.id))

    assert oldest_lease.job.id == oldest.id
    assert canceled.state == jobs_pb2.JOB_STATE_CANCELED
    assert canceled.HasField("complete_time")
    assert again == completed == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_CANCELABLE")
    await billing.settle_to([oldest.id], [queued.id])
    assert await billing.balance() == (1, 0)


async def test_a_canceled_job_tells_its_worker_to_stop(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    job = await create(jobs)
    held = (await lease(jobs)).lease

    await cancel(jobs, job.id)
    heartbeat = await progress(jobs, job.id, held.token, 0.5)
    completion = await refusal(complete(jobs, job.id, held.token))

    assert heartbeat.canceled
    assert completion == LEASE_LOST
    await billing.settle_to([], [job.id])
    assert await billing.balance() == (1, 0)


async def test_jobs_ended_while_billing_is_down_are_settled_once_it_is_back(
    jobs: Stub, billing: Billing
) -> None:
    await billing.grant(2)
    completed, canceled = await create(jobs), await create(jobs)
    held = (await lease(jobs)).lease
    await billing.stop()

    # Ending a job does not wait for billing: its capture or release is left to the reconciler.
    ended = [await complete(jobs, completed.id, held.token), await cancel(jobs, canceled.id)]
    await billing.restart()

    await billing.settle_to([completed.id], [canceled.id])
    states = [job.state for job in ended]
    assert states == [jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_CANCELED]
    assert await billing.balance() == (1, 0)


async def test_concurrent_workers_lease_each_job_exactly_once(jobs: Stub, billing: Billing) -> None:
    await billing.grant(20)
    created = await asyncio.gather(*(create(jobs) for _ in range(20)))
    leased: list[str] = []

    async def work() -> None:
        while (response := await lease(jobs)).HasField("lease"):
            leased.append(response.lease.job.id)
            await complete(jobs, response.lease.job.id, response.lease.token)

    await asyncio.gather(*(work() for _ in range(5)))

    ids = sorted(job.id for job in created)
    assert sorted(leased) == ids
    assert {(await get(jobs, job_id)).state for job_id in ids} == {jobs_pb2.JOB_STATE_COMPLETED}
    await billing.settle_to(ids, [])
    assert await billing.balance() == (0, 0)


async def test_another_accounts_job_is_not_found(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    job = await create(jobs)

    got = await refusal(get(jobs, job.id, account_id="acct_other"))
    canceled = await refusal(cancel(jobs, job.id, account_id="acct_other"))

    assert got == canceled == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    assert await listed(jobs, account_id="acct_other") == []
    assert (await get(jobs, job.id)).state == jobs_pb2.JOB_STATE_QUEUED


async def test_list_pages_newest_first_and_filters(jobs: Stub, billing: Billing) -> None:
    await billing.grant(3)
    first, second, third = [await create(jobs) for _ in range(3)]
    await create(jobs, livemode=False)
    request = jobs_pb2.ListJobsRequest(account_id=ACCOUNT, livemode=True, page_size=2)

    page_one = await jobs.ListJobs(request)
    request.page_token = page_one.next_page_token
    page_two = await jobs.ListJobs(request)
    leased = (await lease(jobs)).lease.job
    running = await listed(jobs, state=jobs_pb2.JOB_STATE_RUNNING)

    assert [job.id for job in page_one.jobs] == [third.id, second.id]
    assert [job.id for job in page_two.jobs] == [first.id]
    assert page_two.next_page_token == ""
    assert running == [leased.id] == [first.id]


async def test_watch_streams_each_change_until_the_job_ends(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    job = await create(jobs)
    stream = jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id, account_id=ACCOUNT))

    events = [await stream.read()]
    held = (await lease(jobs)).lease
    events.append(await stream.read())
    await progress(jobs, job.id, held.token, 0.25)
    events.append(await stream.read())
    await complete(jobs, job.id, held.token)
    events.append(await stream.read())

    assert [(event.type, event.job.state, event.job.progress) for event in events] == [
        (jobs_pb2.JOB_EVENT_TYPE_STATUS, jobs_pb2.JOB_STATE_QUEUED, 0.0),
        (jobs_pb2.JOB_EVENT_TYPE_STATUS, jobs_pb2.JOB_STATE_RUNNING, 0.0),
        (jobs_pb2.JOB_EVENT_TYPE_PROGRESS, jobs_pb2.JOB_STATE_RUNNING, 0.25),
        (jobs_pb2.JOB_EVENT_TYPE_STATUS, jobs_pb2.JOB_STATE_COMPLETED, 1.0),
    ]
    assert await stream.read() is grpc.aio.EOF


async def test_a_repeated_create_with_a_key_replays_its_job(jobs: Stub, billing: Billing) -> None:
    await billing.grant(5)

    first, first_replayed = await create_with_key(jobs)
    again, again_replayed = await create_with_key(jobs)

    assert (first_replayed, again_replayed) == (False, True)
    assert again.id == first.id
    assert await listed(jobs) == [first.id]
    assert await billing.held() == [first.id]
    assert await billing.balance() == (4, 1)


async def test_a_key_sent_with_another_request_is_refused(jobs: Stub, billing: Billing) -> None:
    await billing.grant(5)
    first, _ = await create_with_key(jobs, prompt="a lighthouse")

    other_prompt = await refusal(create_with_key(jobs, prompt="a harbour"))
    other_mode = await refusal(create_with_key(jobs, prompt="a lighthouse", livemode=False))

    assert other_prompt == other_mode == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert await listed(jobs) == [first.id]
    assert await billing.held() == [first.id]


async def test_concurrent_creates_with_one_key_create_one_job(jobs: Stub, billing: Billing) -> None:
    await billing.grant(10)

    outcomes = await asyncio.gather(
        *(create_with_key(jobs) for _ in range(10)), return_exceptions=True
    )

    answered = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, tuple)]
    # Exactly one created the job; the others got it replayed or were told to retry.
    assert [replayed for _, replayed in answered].count(False) == 1
    assert len({job.id for job, _ in answered}) == 1
    assert all(isinstance(error, grpc.aio.AioRpcError) for error in refused)
    assert {(error.code(), reason_of(error)) for error in refused} <= {KEY_IN_USE}
    [job_id] = await listed(jobs)
    assert answered[0][0].id == job_id
    assert await billing.held() == [job_id]
    assert await billing.balance() == (9, 1)


async def test_a_replay_resumes_a_create_whose_call_died_before_its_hold_was_known(
    jobs: Stub, billing: Billing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Billing went away during the create: the job stays pending and the client is told to
    retry (503). Once the first call is surely gone, the client's retry with the same key
    resumes the create, Reserve being idempotent by job id: one job, held once."""
    await billing.grant(1)
    await billing.stop()
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await create_with_key(jobs)
    assert unknown.value.code() == grpc.StatusCode.UNAVAILABLE
    await billing.restart()
    assert await refusal(create_with_key(jobs)) == KEY_IN_USE  # the first call may still run

    monkeypatch.setattr(domain, "RESUME_PENDING_AFTER", timedelta(0))
    resumed = await asyncio.gather(*(create_with_key(jobs) for _ in range(3)))

    assert {replayed for _, replayed in resumed} == {True}
    assert len({job.id for job, _ in resumed}) == 1
    [job_id] = await listed(jobs)
    assert (await get(jobs, job_id)).state == jobs_pb2.JOB_STATE_QUEUED
    assert await billing.held() == [job_id]
    assert await billing.balance() == (0, 1)


async def test_a_key_belongs_to_its_account(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    await billing.grant(1, account_id="acct_other")

    mine, mine_replayed = await create_with_key(jobs)
    theirs, theirs_replayed = await create_with_key(jobs, account_id="acct_other")

    assert mine.id != theirs.id
    assert (mine_replayed, theirs_replayed) == (False, False)
    assert await billing.held() == [mine.id]
    assert await billing.held("acct_other") == [theirs.id]


async def test_a_refused_create_may_be_retried_with_its_key(jobs: Stub, billing: Billing) -> None:
    refused = await refusal(create_with_key(jobs))
    await billing.grant(1)

    job, replayed = await create_with_key(jobs)

    assert refused == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    assert (job.state, replayed) == (jobs_pb2.JOB_STATE_QUEUED, False)
    assert await listed(jobs) == [job.id]
    assert await billing.held() == [job.id]


async def test_a_key_longer_than_255_characters_is_refused(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_with_key(jobs, key="k" * 256)

    refused = remote_error(caught.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PARAMETER_INVALID")
    assert refused.metadata == {"param": "idempotency_key"}
    assert await billing.held() == []


async def test_cancel_racing_completion_ends_each_job_one_way(jobs: Stub, billing: Billing) -> None:
    """Twenty running jobs, each completed and canceled at the same moment: each ends either
    completed and charged or canceled and refunded, never both, and no hold is left."""
    await billing.grant(20)
    created = [await create(jobs) for _ in range(20)]
    leases = [(await lease(jobs)).lease for _ in created]

    async def race(held: jobs_pb2.Lease) -> None:
        outcomes = await asyncio.gather(
            complete(jobs, held.job.id, held.token),
            cancel(jobs, held.job.id),
            return_exceptions=True,
        )
        assert sum(not isinstance(outcome, Exception) for outcome in outcomes) == 1, outcomes

    await asyncio.gather(*(race(held) for held in leases))

    ended = {job.id: (await get(jobs, job.id)).state for job in created}
    done = [job_id for job_id, state in ended.items() if state == jobs_pb2.JOB_STATE_COMPLETED]
    undone = [job_id for job_id, state in ended.items() if state == jobs_pb2.JOB_STATE_CANCELED]
    assert len(done) + len(undone) == 20
    await billing.settle_to(done, undone)
    assert await billing.balance() == (20 - len(done), 0)


async def test_a_failed_job_is_not_cancelable(jobs: Stub, billing: Billing) -> None:
    await billing.grant(1)
    job = await create(jobs)
    held = (await lease(jobs)).lease
    await fail(jobs, job.id, held.token, retryable=False)

    assert await refusal(cancel(jobs, job.id)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "JOB_NOT_CANCELABLE",
    )
    await billing.settle_to([], [job.id])
    assert await billing.balance() == (1, 0)


async def positions_of(jobs: Stub, created: list[jobs_pb2.Job]) -> list[int | None]:
    found = [await get(jobs, job.id) for job in created]
    return [job.queue_position if job.HasField("queue_position") else None for job in found]


async def test_jobs_created_at_once_take_each_place_once_and_move_up_as_workers_lease(
    jobs: Stub, billing: Billing
) -> None:
    await billing.grant(30)
    created = list(await asyncio.gather(*(create(jobs) for _ in range(30))))

    first = await positions_of(jobs, created)
    in_line = sorted(created, key=lambda job: first[created.index(job)] or 0)
    seen = [first]
    for _ in created:
        await lease(jobs)
        seen.append(await positions_of(jobs, in_line))

    assert sorted(first) == list(range(30))  # type: ignore[type-var]
    assert sorted(job.queue_position for job in created) == list(range(30))
    for leased, positions in enumerate(seen[1:], start=1):
        assert positions == [None] * leased + list(range(30 - leased))


async def test_positions_close_up_behind_a_job_that_leaves_out_of_order_or_comes_back(
    mesh: Mesh, database: Database, billing: Billing
) -> None:
    await billing.grant(5)
    async with jobs_server(mesh, jobs_settings(database)) as jobs:
        retried, middle, last = [await create(jobs) for _ in range(3)]
        audio = await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                account_id=ACCOUNT,
                livemode=True,
                spec=jobs_pb2.JobSpec(mode=jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, prompt="rain"),
            )
        )
        held = (await lease(jobs)).lease
        after_lease = await positions_of(jobs, [retried, middle, last, audio])
        await cancel(jobs, middle.id)
        after_cancel = await positions_of(jobs, [retried, middle, last])
        # A retry goes back to its place at the head of the queue.
        await fail(jobs, retried.id, held.token, retryable=True)
        after_retry = await positions_of(jobs, [retried, middle, last])

    assert held.job.id == retried.id
    assert after_lease == [None, 0, 1, 0]
    assert after_cancel == [None, None, 0]
    assert after_retry == [0, None, 1]
