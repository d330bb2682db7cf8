"""The gateway's completion service: validate, pick the engine, proxy, count."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from cellar.errors import CellarError, ContextLengthExceeded
from cellar.protocol import ChatCompletionRequest, CompletionRequest
from cellar.web import unless_disconnected
from server.metrics import Metrics
from server.proxy import Call, Proxy, WorkerUnreachable
from server.supervisor import Supervisor

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


def check_room(body: ChatCompletionRequest | CompletionRequest, window: int | None) -> None:
    """Refuse a completion that cannot fit the context whatever the prompt (every prompt has at
    least one token). The worker checks the exact sum once it has tokenized the prompt; vLLM
    would instead shorten the completion silently."""
    limit = body.token_limit()
    if window is None or limit is None or limit < window:
        return
    param = (
        "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    )
    raise ContextLengthExceeded(
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{limit} tokens for the completion alone, which leaves no room for the prompt. "
        f"Please reduce {param}.",
        param=param,
    )


class CompletionService:
    def __init__(self, supervisor: Supervisor, proxy: Proxy, metrics: Metrics) -> None:
        self.supervisor = supervisor
        self.proxy = proxy
        self.metrics = metrics

    async def complete(
        self, request: Request, path: str, body: ChatCompletionRequest | CompletionRequest
    ) -> Response:
        started = time.monotonic()
        deployment = self.supervisor.get(body.model)  # unknown models: 404 before anything else
        try:
            body.check_supported()
            check_room(body, deployment.context_window)
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
        try:
            payload = lease.engine.prepare(path, body.model_dump(exclude_unset=True, by_alias=True))
        except BaseException:
            lease.release()
            raise
        call = Call(
            model=body.model,
            engine=lease.engine,
            path=path,
            payload=payload,
            client_wants_usage=body.wants_usage_in_stream(),
            started=started,
            on_done=lease.release,
        )
        try:
            return await self.proxy.forward(request, call)
        except WorkerUnreachable:
            self.supervisor.report_unreachable(lease)
            raise
