"""The gateway's completion service: validate, pick the engine, proxy, count."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from cellar.errors import CellarError
from cellar.protocol import ChatCompletionRequest, CompletionRequest
from cellar.web import unless_disconnected
from server.metrics import Metrics
from server.proxy import Call, Proxy, WorkerUnreachable
from server.supervisor import Supervisor

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


class CompletionService:
    def __init__(self, supervisor: Supervisor, proxy: Proxy, metrics: Metrics) -> None:
        self.supervisor = supervisor
        self.proxy = proxy
        self.metrics = metrics

    async def complete(
        self, request: Request, path: str, body: ChatCompletionRequest | CompletionRequest
    ) -> Response:
        started = time.monotonic()
        self.supervisor.get(body.model)  # unknown models: 404 before anything else
        try:
            body.check_supported()
            try:
                return await self._attempt(request, path, body, started)
            except WorkerUnreachable:
                # The worker died before the gateway noticed; the request never reached it.
                return await self._attempt(request, path, body, started)
        except CellarError as exc:
            self.metrics.record(body.model, exc.status, time.monotonic() - started)
            raise

    async def _attempt(
        self,
        request: Request,
        path: str,
        body: ChatCompletionRequest | CompletionRequest,
        started: float,
    ) -> Response:
        lease = await unless_disconnected(request, self.supervisor.acquire(body.model))
        call = Call(
            model=body.model,
            engine=lease.engine,
            path=path,
            payload=body.model_dump(exclude_unset=True, by_alias=True),
            client_wants_usage=body.wants_usage_in_stream(),
            started=started,
            on_done=lease.release,
        )
        try:
            return await self.proxy.forward(request, call)
        except WorkerUnreachable:
            self.supervisor.report_unreachable(lease)
            raise
