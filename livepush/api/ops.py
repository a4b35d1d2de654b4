"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from livepush.runtime import runtime_of


async def healthz(request: Request) -> Response:
    """The process is alive and serving."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """The broker is reachable: 200 when publishing would work, 503 when not."""
    runtime = runtime_of(request)
    if runtime.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if await runtime.broker.ready():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "broker unavailable"}, status_code=503)


async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = generate_latest(runtime_of(request).registry)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
