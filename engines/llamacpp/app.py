"""The worker's OpenAI-compatible HTTP API over one loaded model."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cellar.engines.grammar import BUILD_TIMEOUT_S, Grammar, grammar_off_loop
from cellar.engines.llamacpp.grammar import check_grammar
from cellar.engines.llamacpp.jobs import DEFAULT_TOP_K, Job, Piece, SamplingParams, TokenLogprob
from cellar.engines.llamacpp.model import Loaded
from cellar.engines.llamacpp.responses import Choice, Kind, Shaper, Usage
from cellar.engines.llamacpp.scheduler import BatchScheduler
from cellar.engines.toolcalls import (
    CallParser,
    event_delta,
    finish_reason,
    parse_calls,
    tool_grammar,
)
from cellar.errors import InvalidRequest, ModelNotFound
from cellar.protocol import ChatCompletionRequest, CompletionRequest
from cellar.web import install_error_handlers, sse_event, sse_response, unless_disconnected

Body = ChatCompletionRequest | CompletionRequest


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _sampling(body: Body, max_tokens: int, grammar: Grammar | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_or(body.temperature, 1.0),
        top_p=_or(body.top_p, 1.0),
        top_k=DEFAULT_TOP_K if body.top_k is None else max(body.top_k, 0),
        min_p=_or(body.min_p, 0.0),
        stop=tuple(body.stop_list()),
        seed=body.seed,
        presence_penalty=_or(body.presence_penalty, 0.0),
        frequency_penalty=_or(body.frequency_penalty, 0.0),
        repetition_penalty=_or(body.repetition_penalty, 1.0),
        logprobs=body.top_logprob_count(),
        grammar=grammar.text if grammar else None,
        grammar_trigger=grammar.trigger if grammar else None,
        ignore_eos=body.ignore_eos,
        logit_bias=body.biases(),
    )


def _usage(jobs: list[Job]) -> Usage:
    """The prompt once (with the first choice's reuse of earlier requests), every completion."""
    completion = sum(job.completion_tokens for job in jobs)
    return Usage(len(jobs[0].prompt), completion, jobs[0].cached_tokens)


def _choices(body: Body, max_tokens: int, grammar: Grammar | None) -> list[SamplingParams]:
    """One set of sampling parameters per choice; with a seed, choice i draws from seed + i
    (reproducible, and different from each other)."""
    first = _sampling(body, max_tokens, grammar)
    n = body.n or 1
    if body.seed is None:
        return [first] * n
    return [dataclasses.replace(first, seed=body.seed + i) for i in range(n)]


def _chunks(shaper: Shaper, index: int, piece: Piece, parser: CallParser) -> list[dict[str, Any]]:
    """A piece of an answer that may call tools: its text and calls, as deltas."""
    events = parser.feed(piece.text) + (parser.close() if piece.finish_reason else [])
    chunks = [shaper.delta_chunk(index, event_delta(event)) for event in events]
    if piece.logprobs:
        chunks.append(shaper.chunk("", None, False, piece.logprobs, index))
    if piece.finish_reason:
        finish = finish_reason(piece.finish_reason, parser.calls, shaper.named_call)
        chunks.append(shaper.chunk("", finish, False, (), index))
    return chunks


async def _stream(
    jobs: list[Job], shaper: Shaper, include_usage: bool, calls: bool
) -> AsyncIterator[bytes]:
    """The choices' pieces as they come, each chunk naming its choice's index; with `calls`,
    text and tool calls are told apart (engines/toolcalls.py)."""
    parsers = [CallParser() for _ in jobs]
    merged: asyncio.Queue[tuple[int, Piece | BaseException]] = asyncio.Queue()

    async def feed(index: int, job: Job) -> None:
        try:
            async for piece in job.pieces():
                merged.put_nowait((index, piece))
        except Exception as exc:  # handed to the stream, which raises it
            merged.put_nowait((index, exc))

    feeders = [asyncio.create_task(feed(i, job)) for i, job in enumerate(jobs)]
    started: set[int] = set()
    try:
        for _ in jobs:
            while True:
                index, piece = await merged.get()
                if isinstance(piece, BaseException):
                    raise piece
                first = index not in started
                if calls:
                    if first:
                        yield sse_event(shaper.chunk("", None, True, (), index))
                        started.add(index)
                    for chunk in _chunks(shaper, index, piece, parsers[index]):
                        yield sse_event(chunk)
                elif piece.text or piece.finish_reason or piece.logprobs or first:
                    chunk = shaper.chunk(
                        piece.text, piece.finish_reason, first, piece.logprobs, index
                    )
                    yield sse_event(chunk)
                    started.add(index)
                if piece.finish_reason is not None:
                    break
        if include_usage:
            yield sse_event(shaper.usage_chunk(_usage(jobs)))
    finally:
        for feeder in feeders:
            feeder.cancel()


async def _collect(job: Job, calls: bool) -> Choice:
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    finish = "stop"
    async for piece in job.pieces():
        parts.append(piece.text)
        logprobs.extend(piece.logprobs)
        finish = piece.finish_reason or finish
    if not calls:
        return Choice("".join(parts), finish, logprobs)
    content, made = parse_calls("".join(parts))
    return Choice(content, finish, logprobs, made)


class WorkerService:
    """Validates requests, queues generation jobs and shapes the answers."""

    def __init__(self, loaded: Loaded, scheduler: BatchScheduler) -> None:
        self.model = loaded.model
        self.vocab = loaded.native.vocab
        self.scheduler = scheduler
        self.adapters = list(loaded.adapters)

    def check_biases(self, body: Body) -> None:
        n_vocab = self.model.n_vocab
        outside = [token for token, _ in body.biases() if token >= n_vocab]
        if outside:
            raise InvalidRequest(
                f"`logit_bias` names token ids outside the vocabulary (0..{n_vocab - 1}): "
                f"{outside[:5]}",
                param="logit_bias",
            )

    def check_model(self, body: Body) -> None:
        if body.model != self.model.name and body.model not in self.adapters:
            served = ", ".join([self.model.name, *self.adapters])
            raise ModelNotFound(f"this worker serves {served}, not {body.model!r}", param="model")

    async def _grammar(self, body: Body) -> Grammar | None:
        """The grammar the answer follows: `response_format`'s or the tool calls'."""
        if isinstance(body, ChatCompletionRequest) and body.tool_mode() != "none":
            try:
                tools = await asyncio.wait_for(
                    asyncio.to_thread(tool_grammar, body), BUILD_TIMEOUT_S
                )
            except TimeoutError:
                raise InvalidRequest(
                    f"building the tools' grammar took longer than {BUILD_TIMEOUT_S:g} s",
                    param="tools",
                ) from None
            if tools is not None:
                check_grammar(self.vocab, tools.text, "tools")
            return tools
        grammar = await grammar_off_loop(body.response_format)
        if grammar is None:
            return None
        check_grammar(self.vocab, grammar)
        return Grammar(grammar)

    async def run(
        self, request: Request, kind: Kind, body: Body, prompt: list[int], requested: int | None
    ) -> Response:
        param = "messages" if kind == "chat" else "prompt"
        budget = self.model.completion_budget(len(prompt), requested, param)
        self.check_biases(body)
        grammar = await self._grammar(body)
        calls = isinstance(body, ChatCompletionRequest) and body.tool_mode() != "none"
        adapter = body.model if body.model in self.adapters else None
        jobs = self.scheduler.submit_choices(prompt, _choices(body, budget, grammar), adapter)
        named = isinstance(body, ChatCompletionRequest) and body.tool_mode() == "named"
        shaper = Shaper(kind, body.model, body.top_logprob_count() is not None, named)

        async def cancel() -> None:
            for job in jobs:
                job.cancel()

        if body.stream:
            stream = _stream(jobs, shaper, body.wants_usage_in_stream(), calls)
            return sse_response(stream, cancel)
        try:
            gathered = asyncio.gather(*(_collect(job, calls) for job in jobs))
            choices = await unless_disconnected(request, gathered)
        finally:
            await cancel()
        return JSONResponse(shaper.full(choices, _usage(jobs)))

    def stats(self) -> dict[str, int]:
        counters = self.scheduler.counters
        return {
            "running": self.scheduler.running,
            "waiting": self.scheduler.waiting,
            "prompt_tokens_evaluated": counters.prompt_tokens_evaluated,
            "prompt_tokens_cached": counters.prompt_tokens_cached,
            "decode_steps": counters.decode_steps,
            "adapter_switches": counters.adapter_switches,
        }


def worker_app(title: str, stats: Callable[[], dict[str, int]]) -> FastAPI:
    """A worker's app with OpenAI-shaped errors, `/health` and `/stats`."""
    app = FastAPI(title=title, docs_url=None)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats_route() -> dict[str, int]:
        return stats()

    return app


def create_worker_app(service: WorkerService) -> FastAPI:
    app = worker_app(f"cellar llama.cpp worker: {service.model.name}", service.stats)
    app.state.service = service

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        base = service.model.name
        data = [{"id": base, "object": "model", "created": 0, "owned_by": "cellar"}]
        data += [
            {"id": name, "object": "model", "created": 0, "owned_by": "cellar", "parent": base}
            for name in service.adapters
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        service.check_model(body)
        body.check_supported()
        # A template from a model file may be slow (bounded, see cellar.chat): off the loop.
        functions = body.callable_tools()
        prompt = await asyncio.to_thread(service.model.chat_prompt, body.messages, functions)
        return await service.run(request, "chat", body, prompt, body.token_limit())

    @app.post("/v1/embeddings")
    async def embeddings() -> None:
        raise InvalidRequest(
            f"model {service.model.name!r} generates text; it gives no embeddings (serve an "
            "embedding model with `task: embed`)",
            param="model",
        )

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        service.check_model(body)
        body.check_supported()
        prompt = service.model.completion_prompt(body.single_prompt())
        return await service.run(request, "completion", body, prompt, body.token_limit())

    return app
