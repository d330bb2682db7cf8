"""`create_app`: the gateway, built in its lifespan and kept on app.state (no module state)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from cellar import __version__
from cellar.auditlog import default_canary_history
from cellar.config_access import BatchSettings, CanarySettings, DriftSettings, LimitSettings
from cellar.deployments import ResolvedDeployment, Resolver
from cellar.server.audit import AuditLog, AuditMiddleware
from cellar.server.auth import Authenticator
from cellar.server.batches import Batches
from cellar.server.bodylimit import BodyLimit
from cellar.server.canary import Canary
from cellar.server.deployment import Limits
from cellar.server.drift import DriftMonitor
from cellar.server.guarded import GuardedRollouts
from cellar.server.hosts import LOOPBACK_NAMES, HostCheck
from cellar.server.loopwatch import LoopWatch
from cellar.server.metrics import Metrics
from cellar.server.proxy import Proxy
from cellar.server.responses import Responses
from cellar.server.routes import batches as batch_routes
from cellar.server.routes import openai, ops, rollouts
from cellar.server.service import CompletionService
from cellar.server.supervisor import Estimator, Launcher, Supervisor
from cellar.store import ModelStore
from cellar.web import install_error_handlers

UPLOAD_OVERHEAD = 64 * 1024
"""Bytes of a file upload's multipart framing allowed beyond the file itself."""


@dataclass(frozen=True)
class Access:
    """Who may call, within which limits, and the record of what they did."""

    auth: Authenticator
    limits: LimitSettings
    audit: AuditLog | None
    log_content: bool = False
    canary: CanarySettings = field(default_factory=CanarySettings)
    canary_history: Path = field(default_factory=default_canary_history)
    hosts: frozenset[str] | None = LOOPBACK_NAMES
    """Host names answered (`server.allowed_hosts` and loopback); None: any."""
    drift: DriftSettings = field(default_factory=DriftSettings)
    batches: BatchSettings = field(default_factory=BatchSettings)
    batches_dir: Path | None = None
    """Where files and batches are kept; None: no Files and Batches API."""


def create_app(
    deployments: list[ResolvedDeployment],
    store: ModelStore,
    launcher: Launcher,
    estimator: Estimator,
    limits: Limits,
    access: Access,
    resolver: Resolver | None = None,
) -> FastAPI:
    """The gateway app; its workers start with the app and stop with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Workers are reached through their own channels; this client sends the webhook only,
        # and never through the environment's HTTP proxy.
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
            metrics = Metrics()
            supervisor = Supervisor(
                deployments, store, launcher, estimator, limits, metrics, resolver
            )
            app.state.started_at = time.time()
            proxy = Proxy(metrics)
            app.state.completions = CompletionService(
                supervisor,
                proxy,
                metrics,
                request_timeout_s=access.limits.request_timeout,
                log_content=access.log_content,
            )
            app.state.responses = Responses(app.state.completions)
            canary = Canary(access.canary, supervisor, metrics, access.canary_history, client)
            app.state.canary = canary
            generating = [d.spec.name for d in deployments if d.spec.task != "embed"]
            drift = DriftMonitor(
                access.drift,
                access.audit.path if access.audit is not None else None,
                generating,
                metrics,
                client,
                access.canary.webhook,
            )
            app.state.drift = drift
            guarded = GuardedRollouts(
                supervisor, store, canary, metrics, client, access.canary.webhook
            )
            app.state.completions.rollouts = app.state.rollouts = guarded
            batches = None
            if access.batches_dir is not None and access.batches.enabled:
                batches = Batches(
                    access.batches, access.batches_dir, access.auth, metrics, _audit_writer(access)
                )
            app.state.batches = batches
            supervisor.start()
            canary.start()
            drift.start()
            await guarded.recover()
            guarded.start_watching()
            if batches is not None:
                await batches.start(app)
            watch = LoopWatch(lambda _: metrics.loop_stalls.inc())
            watch.start()
            try:
                yield
            finally:
                if batches is not None:
                    await batches.stop()
                await guarded.stop()
                await drift.stop()
                await canary.stop()
                await supervisor.stop_all()
                watch.stop()
                if access.audit is not None:
                    access.audit.close()

    # No /docs or /redoc (they load their scripts from a CDN); /openapi.json is an admin route.
    app = FastAPI(
        title="Cellar",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.auth = access.auth
    app.state.audit = access.audit
    install_error_handlers(app)
    uploads = {"/v1/files": access.batches.max_file_size + UPLOAD_OVERHEAD}
    app.add_middleware(BodyLimit, max_bytes=access.limits.max_body, larger=uploads)
    app.add_middleware(HostCheck, allowed=access.hosts)
    app.add_middleware(AuditMiddleware, audit=access.audit)  # outermost: sees every refusal
    app.include_router(openai.router)
    app.include_router(ops.router)
    app.include_router(rollouts.router)
    app.include_router(batch_routes.router)
    app.include_router(batch_routes.admin_router)
    _document_models(app, [d.spec.name for d in deployments])
    return app


def _audit_writer(access: Access) -> Callable[[dict[str, Any]], None] | None:
    """Where a batch's end is recorded: a line of the audit log."""
    audit = access.audit
    if audit is None:
        return None

    def write(fields: dict[str, Any]) -> None:
        audit.write({"time": datetime.now(UTC).isoformat(), **fields})

    return write


def _document_models(app: FastAPI, names: list[str]) -> None:
    """The OpenAPI schema lists the models this gateway serves as the values of `model`."""
    from fastapi.openapi.utils import get_openapi

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = document.get("components", {}).get("schemas", {})
            for request in ("ChatCompletionRequest", "CompletionRequest"):
                model = components.get(request, {}).get("properties", {}).get("model")
                if model is not None and names:
                    model["enum"] = names
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
