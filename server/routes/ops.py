"""Operations endpoints: health, Prometheus metrics, deployment state."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from cellar.errors import InvalidApiKey, InvalidRequest, PermissionDenied
from cellar.server.auditwriter import AuditLog
from cellar.server.auth import health_access, metrics_access, require_admin
from cellar.server.canary import Canary
from cellar.server.drift import DriftMonitor
from cellar.server.service import CompletionService
from cellar.server.system import system_report

router = APIRouter()


def _service(request: Request) -> CompletionService:
    service: CompletionService = request.app.state.completions
    return service


@router.get("/health/live", dependencies=[Depends(health_access)])
async def live() -> dict[str, str]:
    """The gateway process answers."""
    return {"status": "ok"}


@router.get("/health/ready", dependencies=[Depends(health_access)])
async def ready(request: Request) -> JSONResponse:
    """200 only when every preloaded model is loaded and warmed up."""
    supervisor = _service(request).supervisor
    ok = supervisor.all_preloaded_ready()
    audit = _audit(request)
    status = "ready" if ok else "not_ready"
    if ok and audit.get("error"):
        status = "degraded"  # serving, but audit lines are being lost
    models = supervisor.describe()
    body: dict[str, Any] = {"status": status, "models": models, "audit": audit}
    if not await _is_admin(request):  # no paths, digests, pids or error text for anyone else
        body = {"status": status, "models": [{k: m[k] for k in ("name", "state")} for m in models]}
    return JSONResponse(body, status_code=200 if ok else 503)


async def _is_admin(request: Request) -> bool:
    try:
        await require_admin(request)
    except (InvalidApiKey, PermissionDenied):
        return False
    return True


def _audit(request: Request) -> dict[str, Any]:
    """The audit writer's health: lines lost so far, and why while it cannot write."""
    audit: AuditLog | None = request.app.state.audit
    if audit is None:
        return {"enabled": False}
    return {"enabled": True, "dropped": audit.dropped, "error": audit.error}


@router.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_admin)])
async def openapi(request: Request) -> dict[str, Any]:
    """The API's schema lists every model: admins only."""
    schema: dict[str, Any] = request.app.openapi()
    return schema


@router.get("/metrics", dependencies=[Depends(metrics_access)])
async def metrics(request: Request) -> Response:
    service = _service(request)
    await service.supervisor.refresh_load()
    batches = getattr(request.app.state, "batches", None)
    if batches is not None:
        await batches.refresh_metrics()
    service.metrics.audit_dropped(_audit(request).get("dropped", 0))
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/admin/models", dependencies=[Depends(require_admin)])
async def admin_models(request: Request) -> dict[str, Any]:
    supervisor = _service(request).supervisor
    models = supervisor.describe()
    rollouts = {r["deployment"]: r for r in request.app.state.rollouts.describe()}
    for model in models:
        model["rollout"] = rollouts.get(model["name"])
    return {"memory_budget_bytes": supervisor.budget_bytes, "models": models}


@router.get("/admin/system", dependencies=[Depends(require_admin)])
async def admin_system(request: Request) -> dict[str, Any]:
    """The machine, the serving software and each model's artifact (for benchmark records)."""
    supervisor = _service(request).supervisor
    resolved = [supervisor.get(name).resolved for name in supervisor.names]
    return {**await asyncio.to_thread(system_report, resolved), "audit": _audit(request)}


@router.post("/admin/canary", dependencies=[Depends(require_admin)])
async def admin_canary(request: Request, model: str | None = None) -> dict[str, Any]:
    """Run the golden prompts now (of one model, or of every model that has some)."""
    canary: Canary = request.app.state.canary
    names = None
    if model is not None:
        _service(request).supervisor.get(model)
        names = [model]
    results = await canary.run(names)
    return {"passed": all(r.passed for r in results), "results": [asdict(r) for r in results]}


@router.post("/admin/drift", dependencies=[Depends(require_admin)])
async def admin_drift(request: Request) -> dict[str, Any]:
    """Run the drift report now (`drift:` windows), setting the gauges; the scores per model."""
    monitor: DriftMonitor = request.app.state.drift
    if not monitor.ready:
        raise InvalidRequest("the drift report reads the audit log, and `audit.enabled` is off")
    measured = await monitor.run()
    return {
        model: [
            {"feature": r.feature, "psi": r.psi, "verdict": r.verdict, "p_value": r.p_value}
            for r in results
        ]
        for model, results in measured.items()
    }


@router.post("/admin/models/{name}/load", dependencies=[Depends(require_admin)])
async def admin_load(name: str, request: Request) -> dict[str, Any]:
    """Load now (clearing earlier failures); answers when ready or failed."""
    deployment = await _service(request).supervisor.load(name)
    return deployment.describe()


@router.post("/admin/models/{name}/unload", dependencies=[Depends(require_admin)])
async def admin_unload(name: str, request: Request) -> dict[str, Any]:
    deployment = await _service(request).supervisor.unload(name)
    return deployment.describe()


@router.post("/admin/models/{name}/reload", dependencies=[Depends(require_admin)])
async def admin_reload(name: str, request: Request) -> dict[str, Any]:
    """Resolve the model's source again (its tag may have moved) and switch to a fresh worker
    of that version: started and warmed beside the old one when memory allows, else with new
    requests queued; requests already running finish on the old one. Answers when done."""
    deployment = await _service(request).supervisor.reload(name)
    return deployment.describe()
