"""The gateway's HTTP server: uvicorn in the mesh's event loop, on a socket bound up front."""

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import structlog
import uvicorn
from starlette.types import ASGIApp

from magicpixels.core.server import gateway_socket
from magicpixels.core.settings import GatewaySettings, MeshSettings

log = structlog.get_logger("magicpixels.gateway")


class GatewayServer(uvicorn.Server):
    """uvicorn, minus its signal handling: the mesh stops every part itself, in order."""

    def __init__(
        self,
        app: ASGIApp,
        settings: GatewaySettings,
        mesh: MeshSettings,
        draining: asyncio.Event,
    ) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=False,
                lifespan="on",  # the app follows key revocations while it serves
                timeout_graceful_shutdown=int(mesh.grace_seconds),
            )
        )
        self.socket = gateway_socket(settings.host, settings.port)
        # Connections accepted from a socket asyncio did not make lack TCP_NODELAY; Linux
        # copies it from the listening socket. Without it each small response waits ~40 ms
        # for a delayed ACK (Nagle).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Port 0 took a free port: signed URLs must name the real one.
        settings.port = self.socket.getsockname()[1]
        self.settings = settings
        self._draining = draining

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn waits for the open requests, then cancels those still open: long polls and
        # event streams are asked to answer first.
        self._draining.set()
        await super().shutdown(sockets)

    async def start(self) -> "asyncio.Task[None]":
        """Serves in a task once listening."""
        task = asyncio.create_task(self.serve(sockets=[self.socket]))
        while not self.started:
            if task.done():
                task.result()
                raise RuntimeError("the gateway stopped while starting")
            await asyncio.sleep(0.01)
        log.info("gateway_started", url=self.settings.base_url())
        return task

    async def stop(self, task: "asyncio.Task[None] | None") -> None:
        self.should_exit = True
        if task is not None:
            await task
        self.socket.close()
