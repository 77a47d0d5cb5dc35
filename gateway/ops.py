"""Liveness and readiness."""

import asyncio

import grpc
from fastapi import APIRouter, Request, Response
from grpc_health.v1 import health_pb2, health_pb2_grpc

from magicpixels.core import metrics
from magicpixels.core.errors import Unavailable
from magicpixels.core.service import Mesh
from magicpixels.core.settings import SERVICES
from magicpixels.gateway.responses import JSONResponse
from magicpixels.gateway.state import gateway

router = APIRouter(tags=["operations"])

_PROBE_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Prometheus text format: every service of this process, each series labelled `service`."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Every downstream service answers its gRPC health check as SERVING."""
    mesh = gateway(request).mesh
    results = await asyncio.gather(*(_serving(mesh, name) for name in SERVICES))
    services = {
        name: "serving" if ok else "not_serving"
        for name, ok in zip(SERVICES, results, strict=False)
    }
    ready = all(results)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "services": services},
        status_code=200 if ready else 503,
    )


async def _serving(mesh: Mesh, service: str) -> bool:
    try:
        stub = health_pb2_grpc.HealthStub(mesh.channel(service))
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=_PROBE_SECONDS)
    except (Unavailable, grpc.aio.AioRpcError):  # not started, or not answering
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
