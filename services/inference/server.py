"""The inference service: Generate and ListModels for internal callers, and the worker loops."""

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import structlog

from magicpixels.assets.v1 import assets_pb2_grpc
from magicpixels.core.ids import new_id
from magicpixels.core.server import ServiceBinding
from magicpixels.core.service import Mesh
from magicpixels.core.settings import InferenceSettings
from magicpixels.inference.v1 import inference_pb2, inference_pb2_grpc
from magicpixels.jobs.v1 import jobs_pb2_grpc
from magicpixels.services.inference.backends import (
    Backends,
    backend_for,
    configure_backends,
    mode_name,
)
from magicpixels.services.inference.inputs import fetch_inputs
from magicpixels.services.inference.media import Canceled
from magicpixels.services.inference.worker import CHUNK_BYTES, Worker

log = structlog.get_logger("magicpixels.inference")

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, mesh: Mesh, backends: Backends) -> None:
        self.mesh = mesh
        self.backends = backends

    def _assets(self) -> assets_pb2_grpc.AssetsServiceStub:
        return assets_pb2_grpc.AssetsServiceStub(self.mesh.channel("assets"))

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        backend = backend_for(request.spec.mode, self.backends)
        inputs = await fetch_inputs(self._assets, request.spec, request.account_id)
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[float | None] = asyncio.Queue()
        hung_up = threading.Event()

        def report(fraction: float) -> None:
            if hung_up.is_set():
                raise Canceled("the caller hung up")
            loop.call_soon_threadsafe(progress.put_nowait, fraction)

        running = asyncio.ensure_future(
            asyncio.to_thread(backend.generate, request.spec, inputs, report)
        )
        # Reports from the thread are queued before its end is: the None comes after them all.
        running.add_done_callback(lambda _: progress.put_nowait(None))
        try:
            while (fraction := await progress.get()) is not None:
                yield inference_pb2.GenerateResponse(
                    progress=inference_pb2.GenerateProgress(fraction=fraction)
                )
        finally:  # a caller gone before the end stops the backend at its next step
            hung_up.set()
            running.add_done_callback(_observe)
        media = await running
        yield inference_pb2.GenerateResponse(
            result=inference_pb2.GenerateResult(
                content_type=media.content_type, size_bytes=len(media.data), **media.metadata()
            )
        )
        for offset in range(0, len(media.data), CHUNK_BYTES):
            yield inference_pb2.GenerateResponse(chunk=media.data[offset : offset + CHUNK_BYTES])

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        models = [
            inference_pb2.Model(
                id=f"{backend.name}/{mode_name(mode)}",
                mode=mode,
                backend=backend.name,
                loaded=backend.loaded(mode),
            )
            for mode, backend in sorted(self.backends.items())
        ]
        return inference_pb2.ListModelsResponse(models=models)


def _observe(task: "asyncio.Future[object]") -> None:
    """Takes the outcome of a run nobody awaits any more (its caller hung up), so that asyncio
    does not report its Canceled as never retrieved."""
    if not task.cancelled():
        task.exception()


class InferenceService:
    name = "inference"

    def __init__(self, mesh: Mesh, settings: InferenceSettings) -> None:
        self.mesh = mesh
        self.settings = settings
        self.backends = configure_backends(settings)
        self._workers: list[Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._warm: asyncio.Task[None] | None = None

    async def start(self) -> list[ServiceBinding]:
        """Serves at once; the workers lease jobs once the backends have loaded their models
        (ListModels tells when)."""
        self._warm = asyncio.create_task(self._warm_up())
        for _ in range(self.settings.workers):
            worker = Worker(
                new_id("wrk"),
                jobs_pb2_grpc.JobsServiceStub(self.mesh.channel("jobs")),
                assets_pb2_grpc.AssetsServiceStub(self.mesh.channel("assets")),
                self.backends,
                self.settings.lease_wait_seconds,
            )
            self._workers.append(worker)
            self._tasks.append(asyncio.create_task(self._work(worker)))
        servicer = InferenceServicer(self.mesh, self.backends)
        return [
            ServiceBinding(
                SERVICE_NAME, servicer, inference_pb2_grpc.add_InferenceServiceServicer_to_server
            )
        ]

    async def close(self) -> None:
        """Stops leasing; jobs in hand get the grace period to finish, then are handed back."""
        for worker in self._workers:
            worker.stop()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self.mesh.settings.grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._workers.clear()
        self._tasks.clear()
        if self._warm is not None:
            self._warm.cancel()  # its thread finishes the load unheard
            await asyncio.gather(self._warm, return_exceptions=True)

    async def _work(self, worker: Worker) -> None:
        """Runs the worker once the models are in; a worker stopped meanwhile returns at once."""
        if self._warm is not None:
            await asyncio.shield(self._warm)
        await worker.run_forever()

    async def _warm_up(self) -> None:
        for backend in {id(backend): backend for backend in self.backends.values()}.values():
            try:
                await asyncio.to_thread(backend.warm_up)
            except Exception:  # each job will try again, and fail with the reason logged
                log.exception("warm_up_failed", backend=backend.name)
