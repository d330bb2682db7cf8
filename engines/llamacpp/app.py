"""The worker's OpenAI-compatible HTTP API over one loaded model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cellar.errors import ModelNotFound
from cellar.protocol import ChatCompletionRequest, CompletionRequest
from cellar.web import install_error_handlers, sse_event, sse_response, unless_disconnected
from engines.llamacpp.generator import DEFAULT_TOP_K, Job, SamplingParams, SerialGenerator
from engines.llamacpp.model import LoadedModel
from engines.llamacpp.responses import Kind, Shaper, Usage

Body = ChatCompletionRequest | CompletionRequest


def _sampling(body: Body, max_tokens: int) -> SamplingParams:
    top_k = getattr(body, "top_k", None)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=top_k if isinstance(top_k, int) and top_k >= 0 else DEFAULT_TOP_K,
        stop=tuple(body.stop_list()),
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
    )


async def _stream(job: Job, shaper: Shaper, include_usage: bool) -> AsyncIterator[bytes]:
    first = True
    async for piece in job.pieces():
        if piece.text or piece.finish_reason or first:
            yield sse_event(shaper.chunk(piece.text, piece.finish_reason, first=first))
            first = False
    if include_usage:
        usage = Usage(len(job.prompt), job.completion_tokens)
        yield sse_event(shaper.usage_chunk(usage))


async def _collect(job: Job) -> tuple[str, str]:
    parts, finish = [], "stop"
    async for piece in job.pieces():
        parts.append(piece.text)
        finish = piece.finish_reason or finish
    return "".join(parts), finish


class WorkerService:
    """Validates requests, queues generation jobs and shapes the answers."""

    def __init__(self, model: LoadedModel, generator: SerialGenerator) -> None:
        self.model = model
        self.generator = generator

    def check_model(self, body: Body) -> None:
        if body.model != self.model.name:
            raise ModelNotFound(
                f"this worker serves {self.model.name!r}, not {body.model!r}", param="model"
            )

    async def run(
        self, request: Request, kind: Kind, body: Body, prompt: list[int], requested: int | None
    ) -> Response:
        param = "messages" if kind == "chat" else "prompt"
        budget = self.model.completion_budget(len(prompt), requested, param)
        job = self.generator.submit(prompt, _sampling(body, budget))
        shaper = Shaper(kind, self.model.name)
        if body.stream:

            async def cancel() -> None:
                job.cancel()

            return sse_response(_stream(job, shaper, body.wants_usage_in_stream()), cancel)
        try:
            text, finish = await unless_disconnected(request, _collect(job))
        finally:
            job.cancel()
        usage = Usage(len(prompt), job.completion_tokens)
        return JSONResponse(shaper.full(text, finish, usage))


def create_worker_app(service: WorkerService) -> FastAPI:
    app = FastAPI(title=f"cellar llama.cpp worker: {service.model.name}", docs_url=None)
    app.state.service = service
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return {"running": service.generator.running, "waiting": service.generator.waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": service.model.name, "object": "model", "created": 0, "owned_by": "cellar"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        service.check_model(body)
        body.check_supported()
        prompt = service.model.chat_prompt(body.messages)
        return await service.run(request, "chat", body, prompt, body.token_limit())

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        service.check_model(body)
        body.check_supported()
        prompt = service.model.completion_prompt(body.single_prompt())
        return await service.run(request, "completion", body, prompt, body.token_limit())

    return app
