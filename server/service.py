"""The gateway's service for generation and embeddings: validate, pick the engine, proxy,
count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from cellar.engines.base import Engine
from cellar.engines.grammar import BUILD_TIMEOUT_S, check_format, needs_building
from cellar.engines.passthrough import schema_given, structured_outputs
from cellar.engines.toolcalls import CallRewriter, check_tools_served
from cellar.errors import (
    ApiError,
    ContextLengthExceeded,
    InvalidRequest,
    PermissionDenied,
    RequestTimeout,
)
from cellar.features import script_mix
from cellar.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from cellar.server.audit import AuditEntry
from cellar.server.auth import BATCH_SCOPE, OPEN, OnBehalf, Principal
from cellar.server.deployment import Deployment
from cellar.server.guarded import GuardedRollouts
from cellar.server.metrics import STATUS_CLIENT_GONE, Metrics, Outcome
from cellar.server.policy import (
    Body,
    apply_token_cap,
    estimate_input_tokens,
    estimate_tokens,
    prompt_content,
    prompt_sample,
)
from cellar.server.proxy import Call, Proxy, Tap, WorkerUnreachable
from cellar.server.ratelimit import Grant, RateLimiter
from cellar.server.supervisor import Supervisor
from cellar.web import ClientDisconnected, unless_disconnected

VERSION_HEADER = "x-cellar-model-version"
SHA256_HEADER = "x-cellar-model-sha256"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
RESPONSES_PATH = "/v1/responses"


@dataclass(frozen=True)
class Ask:
    """What one kind of request needs from the shared serving path."""

    path: str
    model: str
    check: Callable[[Deployment], int]
    """Refuses what the deployment cannot serve (before it queues); returns the tokens the
    request is estimated to use, for rate limits."""
    prepare: Callable[[Engine], Awaitable[dict[str, Any]]]
    """The body the worker gets."""
    wants_usage: bool
    rewriter: Callable[[Engine], CallRewriter | None] = lambda engine: None
    """How the engine's answers are rewritten (tool calls read out of its text)."""
    user: str | None = None
    """The request's `user`: a guarded rollout keeps one user on one version."""
    priority: int | None = None
    """The request's `priority`, if it gave one."""


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


def _caller(request: Request, asked: Ask) -> str:
    """Who asks, for a guarded rollout's stickiness: the request's `user`, else its API key,
    else its address."""
    if asked.user:
        return f"user:{asked.user}"
    principal: Principal = getattr(request.state, "principal", OPEN)
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    return f"client:{request.client.host if request.client else '-'}"


def _priority(request: Request, asked: Ask) -> int:
    """Where the request waits for a turn: a batch's own priority; else the request's, which
    only an admin key may set below the key's default."""
    inside: OnBehalf | None = request.scope.get(BATCH_SCOPE)
    if inside is not None:
        return inside.priority
    principal: Principal = getattr(request.state, "principal", OPEN)
    if asked.priority is None:
        return principal.priority
    if asked.priority < principal.priority and principal.role != "admin":
        raise PermissionDenied(
            f"The API key {principal.name!r} may not ask for a priority below its own "
            f"({principal.priority}).",
            param="priority",
        )
    return asked.priority


def _entry(request: Request) -> AuditEntry | None:
    entry = getattr(request.state, "audit", None)
    return entry if isinstance(entry, AuditEntry) else None


class CompletionService:
    def __init__(
        self,
        supervisor: Supervisor,
        proxy: Proxy,
        metrics: Metrics,
        *,
        limiter: RateLimiter | None = None,
        request_timeout_s: float | None = None,
        log_content: bool = False,
    ) -> None:
        self.supervisor = supervisor
        self.proxy = proxy
        self.metrics = metrics
        self.limiter = limiter or RateLimiter()
        self.request_timeout_s = request_timeout_s
        self.log_content = log_content
        self.rollouts: GuardedRollouts | None = None
        """Counts the requests of a deployment under a guarded rollout (set by the app)."""

    async def complete(self, request: Request, path: str, body: Body) -> Response:
        entry = _entry(request)
        if entry is not None:
            entry.model, entry.stream = body.model, body.stream
            entry.prompt_script = script_mix(prompt_sample(body))
            entry.response_format = body.response_format.type if body.response_format else None
            entry.tools = bool(getattr(body, "tools", None))
            if self.log_content:
                entry.prompt = prompt_content(body)

        def check(deployment: Deployment) -> int:
            if deployment.resolved.spec.task == "embed":
                raise InvalidRequest(
                    f"model {body.model!r} is an embedding model: send it to {EMBEDDINGS_PATH}",
                    param="model",
                )
            body.check_supported()
            if isinstance(body, ChatCompletionRequest) and body.tools:
                check_tools_served(body, deployment.resolved.spec.tool_format)
            # a schema bomb, or a regex or grammar too big, is refused before it queues
            check_format(body.response_format)
            structured_outputs(body.model_extra or {}, build=False)
            apply_token_cap(body, deployment.resolved.spec.max_tokens)
            check_room(body, deployment.context_window)
            return estimate_tokens(body)

        async def prepare(engine: Engine) -> dict[str, Any]:
            return await self._prepare(engine, path, body)

        def rewriter(engine: Engine) -> CallRewriter | None:
            return engine.rewriter(body)

        ask = Ask(
            path,
            body.model,
            check,
            prepare,
            body.wants_usage_in_stream(),
            rewriter,
            body.user,
            body.priority,
        )
        return await self._serve(request, entry, ask)

    async def embed(self, request: Request, body: EmbeddingRequest) -> Response:
        entry = _entry(request)
        if entry is not None:
            entry.model, entry.stream = body.model, False

        def check(deployment: Deployment) -> int:
            if deployment.resolved.spec.task != "embed":
                raise InvalidRequest(
                    f"model {body.model!r} generates text and gives no embeddings; send it to "
                    f"{CHAT_PATH}",
                    param="model",
                )
            inputs = body.inputs()
            if entry is not None and self.log_content:
                entry.prompt = "\n".join(item for item in inputs if isinstance(item, str))
            return estimate_input_tokens(inputs)

        async def prepare(engine: Engine) -> dict[str, Any]:
            # vLLM's dialect tokenizes up to 2,048 inputs to check them: off the loop
            return await asyncio.to_thread(engine.prepare, EMBEDDINGS_PATH, body)

        ask = Ask(
            EMBEDDINGS_PATH,
            body.model,
            check,
            prepare,
            False,
            user=body.user,
            priority=body.priority,
        )
        return await self._serve(request, entry, ask)

    async def _serve(self, request: Request, entry: AuditEntry | None, ask: Ask) -> Response:
        """Access, limits and metrics around one request to a model's worker."""
        started = time.monotonic()
        principal: Principal = getattr(request.state, "principal", OPEN)
        principal.check_model(ask.model)  # 403 first: a key learns nothing of other models
        deployment = self.supervisor.get(ask.model)  # unknown models: 404 before anything else
        outcome = self.metrics.outcome(ask.model, started)
        try:
            priority = _priority(request, ask)
            if entry is not None:
                entry.priority = priority
            grant = self.limiter.admit(principal, ask.check(deployment))
            tap = self._tap(entry, grant)
            try:
                response = await self._attempt(request, ask, outcome, tap, priority)
            except WorkerUnreachable:
                # The worker died before the gateway noticed; the request never reached it.
                response = await self._attempt(request, ask, outcome, tap, priority)
        except ApiError as exc:
            outcome.finish(exc.status)
            raise
        except ClientDisconnected:  # while queued, loading or waiting for a whole answer
            outcome.finish(STATUS_CLIENT_GONE)
            raise
        except Exception:
            outcome.finish(500)
            raise
        if not isinstance(response, StreamingResponse):  # a stream counts itself when it ends
            outcome.finish(response.status_code)
        response.headers.update(grant.headers)
        return response

    @staticmethod
    async def _prepare(engine: Engine, path: str, body: Body) -> dict[str, Any]:
        """The engine's body for the request; a grammar is built off the event loop."""
        calls = isinstance(body, ChatCompletionRequest) and body.tool_mode() != "none"
        grammar = needs_building(body.response_format) or schema_given(body.model_extra or {})
        if not (grammar or calls):
            return engine.prepare(path, body)
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(engine.prepare, path, body), BUILD_TIMEOUT_S
            )
        except TimeoutError:
            raise InvalidRequest(
                f"building the grammar of this JSON schema took over {BUILD_TIMEOUT_S:g} s",
                param="tools" if calls else "response_format",
            ) from None

    def _tap(self, entry: AuditEntry | None, grant: Grant) -> Tap:
        def settle(usage: dict[str, object]) -> None:
            total = usage.get("total_tokens")
            self.limiter.settle(grant, total if isinstance(total, int) else None)

        return Tap(entry=entry, capture=self.log_content and entry is not None, on_usage=settle)

    def _deadline(self, started: float) -> float | None:
        if self.request_timeout_s is None:
            return None
        loop = asyncio.get_running_loop()
        return loop.time() + self.request_timeout_s - (time.monotonic() - started)

    async def _attempt(
        self, request: Request, asked: Ask, outcome: Outcome, tap: Tap, priority: int
    ) -> Response:
        deadline = self._deadline(outcome.started)
        model = asked.model
        try:
            async with asyncio.timeout_at(deadline):
                acquired = self.supervisor.acquire(model, _caller(request, asked), priority)
                lease = await unless_disconnected(request, acquired)
        except TimeoutError:
            raise RequestTimeout(
                f"The request waited longer than allowed for model {model!r}."
            ) from None
        try:
            payload = await asked.prepare(lease.engine)
            payload["model"] = self.supervisor.worker_name(model)
            payload.pop("priority", None)  # the gateway's queue used it
        except BaseException:
            lease.release()
            raise
        version = lease.resolved.version
        if version is not None:
            counter = self.metrics.version_requests
            label = version.label
            outcome.observers.append(
                lambda status, _: counter.labels(model, label, str(status)).inc()
            )
        if lease.arm is not None and self.rollouts is not None:
            self.rollouts.observe(lease, outcome, tap, asked.path, payload)
        call = Call(
            model=model,
            engine=lease.engine,
            path=asked.path,
            payload=payload,
            client_wants_usage=asked.wants_usage,
            outcome=outcome,
            on_done=lease.release,
            tap=tap,
            deadline=deadline,
            rewriter=asked.rewriter(lease.engine),
        )
        try:
            response = await self.proxy.forward(request, call)
        except WorkerUnreachable:
            self.supervisor.report_unreachable(lease)
            raise
        if version is not None:  # which stored version answered (it changes on a switch)
            response.headers[VERSION_HEADER] = version.label
            response.headers[SHA256_HEADER] = version.sha256
            if tap.entry is not None:
                tap.entry.version = version.label
        return response
