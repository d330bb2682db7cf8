"""Operations endpoints: health, Prometheus metrics, deployment state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.proxy import refresh_load
from server.service import CompletionService

router = APIRouter()


def _service(request: Request) -> CompletionService:
    service: CompletionService = request.app.state.completions
    return service


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The gateway process answers."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """200 only when every configured model is loaded and ready."""
    supervisor = _service(request).supervisor
    ok = supervisor.all_ready()
    body = {"status": "ready" if ok else "not_ready", "models": supervisor.describe()}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    service = _service(request)
    await refresh_load(request.app.state.http, service.supervisor.ready_engines(), service.metrics)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/admin/models")
async def admin_models(request: Request) -> dict[str, Any]:
    return {"models": _service(request).supervisor.describe()}
