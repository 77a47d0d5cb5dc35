"""The worker against real billing, assets and jobs services: jobs that read input assets
and report their result's size or length, and what happens to a job, its result and its
credits when it is canceled mid-run, the worker stops mid-run or an input is gone."""

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from magicpixels.assets.v1 import assets_pb2, assets_pb2_grpc
from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core.service import start_service, stop_service
from magicpixels.core.timestamps import to_timestamp, utcnow
from magicpixels.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from magicpixels.mesh import RunningMesh, build_service
from magicpixels.services.inference.backends import MODES, BuiltinBackend, ProgressCallback
from magicpixels.services.inference.builtin_image import generate_image
from magicpixels.services.inference.inputs import Inputs
from magicpixels.services.inference.media import Canceled, EncodedMedia
from magicpixels.services.inference.worker import Heartbeat, Worker
from tests.inference.probe import decode_audio, image_pixels
from tests.inference.uploads import upload
from tests.support import Database, LeaseWaits, eventually, services_of

ACCOUNT = "acct_worker_test"


@dataclass(frozen=True)
class GatedBackend(BuiltinBackend):
    """The builtin backend, held at its first progress report until the test opens the gate."""

    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def generate(
        self, spec: jobs_pb2.JobSpec, inputs: Inputs, on_progress: ProgressCallback
    ) -> EncodedMedia:
        def held(fraction: float) -> None:
            on_progress(fraction)
            self.started.set()
            self.gate.wait(timeout=30)

        return super().generate(spec, inputs, held)


@pytest.fixture
async def services(database: Database, tmp_path: Path) -> AsyncIterator[RunningMesh]:
    names = ("billing", "assets", "jobs")
    async with services_of(database, tmp_path / "mesh", names, {ACCOUNT: 5}) as running:
        yield running


def worker_for(running: RunningMesh, backend: GatedBackend) -> Worker:
    return Worker(
        "wrk_test",
        jobs_pb2_grpc.JobsServiceStub(running.mesh.channel("jobs")),
        assets_pb2_grpc.AssetsServiceStub(running.mesh.channel("assets")),
        dict.fromkeys(MODES.values(), backend),
        lease_wait_seconds=5,
    )


async def create_job(running: RunningMesh, spec: jobs_pb2.JobSpec | None = None) -> jobs_pb2.Job:
    jobs = jobs_pb2_grpc.JobsServiceStub(running.mesh.channel("jobs"))
    spec = spec or jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, prompt="a quiet harbour", width=64, height=64
    )
    return await jobs.CreateJob(
        jobs_pb2.CreateJobRequest(account_id=ACCOUNT, livemode=True, spec=spec)
    )


async def job_now(running: RunningMesh, job_id: str) -> jobs_pb2.Job:
    jobs = jobs_pb2_grpc.JobsServiceStub(running.mesh.channel("jobs"))
    return await jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id, account_id=ACCOUNT))


async def balance(running: RunningMesh) -> tuple[int, int]:
    billing = billing_pb2_grpc.BillingServiceStub(running.mesh.channel("billing"))
    found = await billing.GetBalance(billing_pb2.GetBalanceRequest(account_id=ACCOUNT))
    return found.available, found.reserved


async def settled_at(running: RunningMesh, expected: tuple[int, int]) -> bool:
    return await balance(running) == expected


async def stored_assets(running: RunningMesh) -> int:
    assets = assets_pb2_grpc.AssetsServiceStub(running.mesh.channel("assets"))
    listed = await assets.ListAssets(
        assets_pb2.ListAssetsRequest(account_id=ACCOUNT, livemode=True)
    )
    return len(listed.assets)


async def test_a_job_runs_to_completion_and_is_charged(services: RunningMesh) -> None:
    backend = GatedBackend()
    backend.gate.set()
    worker = worker_for(services, backend)
    job = await create_job(services)
    await worker.process(await worker.lease())  # type: ignore[arg-type]
    done = await job_now(services, job.id)
    assert (done.state, done.result.width, done.result.content_type) == (
        jobs_pb2.JOB_STATE_COMPLETED,
        64,
        "image/png",
    )
    assert await stored_assets(services) == 1
    await eventually(lambda: settled_at(services, (4, 0)))


async def test_canceled_mid_run_stores_no_result_and_costs_nothing(services: RunningMesh) -> None:
    backend = GatedBackend()
    worker = worker_for(services, backend)
    job = await create_job(services)
    running = asyncio.create_task(worker.process(await worker.lease()))  # type: ignore[arg-type]
    await asyncio.to_thread(backend.started.wait, 10)
    jobs = jobs_pb2_grpc.JobsServiceStub(services.mesh.channel("jobs"))
    await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id, account_id=ACCOUNT))
    # Whether the heartbeat hears "canceled" first or CompleteJob is refused, no result stays.
    backend.gate.set()
    await running
    assert (await job_now(services, job.id)).state == jobs_pb2.JOB_STATE_CANCELED
    assert await stored_assets(services) == 0
    await eventually(lambda: settled_at(services, (5, 0)))


async def test_a_worker_stopped_mid_run_hands_the_job_back(services: RunningMesh) -> None:
    backend = GatedBackend()
    worker = worker_for(services, backend)
    job = await create_job(services)
    loop = asyncio.create_task(worker.run_forever())
    await asyncio.to_thread(backend.started.wait, 10)
    worker.stop()
    loop.cancel()  # past the grace period
    with pytest.raises(asyncio.CancelledError):
        await loop
    backend.gate.set()
    again = await job_now(services, job.id)
    assert (again.state, again.attempts) == (jobs_pb2.JOB_STATE_QUEUED, 1)
    assert await balance(services) == (4, 1)  # still held for the next attempt


async def test_an_idle_worker_stops_at_once(
    services: RunningMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = LeaseWaits(monkeypatch)
    worker = worker_for(services, GatedBackend())
    loop = asyncio.create_task(worker.run_forever())
    await waits.started.wait()  # now waiting inside LeaseJob
    worker.stop()
    await loop
    # The worker cancelled its LeaseJob call, rather than waiting its 5 s out.
    await eventually(lambda: _equal(waits.ended, ["cancelled"]))


async def _equal(found: list[str], expected: list[str]) -> bool:
    return found == expected


def assets_of(running: RunningMesh) -> assets_pb2_grpc.AssetsServiceStub:
    return assets_pb2_grpc.AssetsServiceStub(running.mesh.channel("assets"))


async def run_one(running: RunningMesh) -> None:
    backend = GatedBackend()
    backend.gate.set()
    worker = worker_for(running, backend)
    await worker.process(await worker.lease())  # type: ignore[arg-type]


async def read_result(running: RunningMesh, job: jobs_pb2.Job) -> bytes:
    request = assets_pb2.ReadAssetRequest(id=job.result.asset_id, account_id=ACCOUNT)
    replies = [reply async for reply in assets_of(running).ReadAsset(request)]
    return b"".join(reply.chunk for reply in replies[1:])


async def test_an_image_to_image_job_restyles_its_uploaded_input(services: RunningMesh) -> None:
    picture = generate_image(prompt="a quiet harbour", width=120, height=80, seed=1)
    source = await upload(assets_of(services), picture.data, "image/png", ACCOUNT)
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE,
        prompt="violet dusk",
        input_asset_id=source.id,
        strength=0.0,
    )
    job = await create_job(services, spec)

    await run_one(services)

    done = await job_now(services, job.id)
    assert done.state == jobs_pb2.JOB_STATE_COMPLETED
    # The size defaults to the input's: strength 0 gives the input back.
    assert (done.result.width, done.result.height) == (120, 80)
    assert not done.result.HasField("duration_seconds")
    restyled = image_pixels(await read_result(services, done))
    assert (restyled == image_pixels(picture.data)).all()


async def test_an_audio_job_reports_its_duration(services: RunningMesh) -> None:
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_TEXT_TO_AUDIO,
        prompt="soft bells",
        duration_seconds=1.5,
        output_format="mp3",
    )
    job = await create_job(services, spec)

    await run_one(services)

    done = await job_now(services, job.id)
    assert (done.state, done.result.content_type, done.result.duration_seconds) == (
        jobs_pb2.JOB_STATE_COMPLETED,
        "audio/mpeg",
        1.5,
    )
    assert not done.result.HasField("width")
    audio = decode_audio(await read_result(services, done))
    assert (audio.codec, audio.seconds) == ("mp3float", 1.5)


async def test_an_input_deleted_before_the_run_fails_the_job_for_good(
    services: RunningMesh,
) -> None:
    picture = generate_image(prompt="a quiet harbour", width=64, height=64, seed=1)
    source = await upload(assets_of(services), picture.data, "image/png", ACCOUNT)
    spec = jobs_pb2.JobSpec(
        mode=jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, prompt="violet dusk", input_asset_id=source.id
    )
    job = await create_job(services, spec)
    await assets_of(services).DeleteAsset(
        assets_pb2.DeleteAssetRequest(id=source.id, account_id=ACCOUNT)
    )

    await run_one(services)

    failed = await job_now(services, job.id)
    assert (failed.state, failed.error.code, failed.attempts) == (
        jobs_pb2.JOB_STATE_FAILED,
        "asset_not_found",
        1,
    )
    await eventually(lambda: settled_at(services, (5, 0)))


async def test_a_heartbeat_that_let_the_job_go_stops_the_backend_at_its_next_report() -> None:
    heartbeat = Heartbeat(jobs=None, lease=jobs_pb2.Lease())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    heartbeat.report_from_thread(loop, 0.25)

    heartbeat.abandoned = True

    with pytest.raises(Canceled):
        heartbeat.report_from_thread(loop, 0.5)
    await asyncio.sleep(0)
    assert heartbeat.progress == 0.25


async def test_a_finished_heartbeat_never_beats_again_though_its_last_report_races_the_stop() -> (
    None
):
    """The backend's last progress sets the beat's event just as the job's end stops it: on
    Python 3.11 the cancel alone may be swallowed, and a beat after completion was refused as
    LEASE_LOST. A beat here would fail on its missing stub."""
    expires = to_timestamp(utcnow() + timedelta(seconds=60))
    for _ in range(50):
        heartbeat = Heartbeat(jobs=None, lease=jobs_pb2.Lease(expire_time=expires))  # type: ignore[arg-type]
        beating = asyncio.create_task(heartbeat.run())
        await asyncio.sleep(0)  # waiting for a report
        heartbeat.report_from_thread(asyncio.get_running_loop(), 1.0)
        await asyncio.sleep(0)  # the report's progress is set: the wait is over
        heartbeat.finish()
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        assert heartbeat.finished


async def test_assets_restarted_mid_run_costs_the_job_no_attempt(services: RunningMesh) -> None:
    """Assets gone when the result is ready (a restart, a rollout): the worker asks again
    until it is back on its address, and the job completes on its first attempt."""
    backend = GatedBackend()
    worker = worker_for(services, backend)
    job = await create_job(services)
    running = asyncio.create_task(worker.process(await worker.lease()))  # type: ignore[arg-type]
    await asyncio.to_thread(backend.started.wait, 10)
    index = next(i for i, (service, _) in enumerate(services.services) if service.name == "assets")
    assets, server = services.services[index]
    await stop_service(assets, server, services.mesh.settings)
    with structlog.testing.capture_logs() as logged:
        backend.gate.set()  # the upload now finds nobody there
        await eventually(lambda: _logged(logged, "assets_unreachable"))

    settings = assets.settings.model_copy(update={"port": server.port})
    again = build_service("assets", services.mesh, settings)
    services.services[index] = (again, await start_service(again, services.mesh))
    await running

    done = await job_now(services, job.id)
    assert (done.state, done.attempts) == (jobs_pb2.JOB_STATE_COMPLETED, 1)
    assert await stored_assets(services) == 1
    await eventually(lambda: settled_at(services, (4, 0)))


async def _logged(events: list[dict[str, Any]], name: str) -> bool:
    return any(event["event"] == name for event in events)
