"""Forwarding to engine workers without re-encoding what they stream.

A streamed answer passes through as the worker's own SSE bytes, event by event. The proxy always
asks the worker for `stream_options.include_usage`, times the first event for TTFT, reads the
token counts from the usage event, and drops that event when the client did not ask for it.
The upstream client is aiohttp: per request it costs about half of httpx's CPU time, and at
16 concurrent streams on a busy CPU that time delays every request behind it.

The one exception: a request with tools to an engine that does not read calls out of its text
itself (vLLM, see engines/vllm/dialect.py) has its answer, or each event, rewritten on the way
(`Call.rewriter`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import Request
from fastapi.responses import Response

from cellar.engines.base import Engine
from cellar.engines.toolcalls import CallRewriter
from cellar.errors import ApiError, EngineFailed, EngineUnavailable, RequestTimeout
from cellar.features import ScriptCounter
from cellar.server.audit import AuditEntry
from cellar.server.metrics import STATUS_CLIENT_GONE, Metrics, Outcome
from cellar.server.upstream import normalize_error
from cellar.web import SSE_DONE, sse_event, sse_response, unless_disconnected

_EVENT_END = b"\n\n"
_DONE_PREFIX = SSE_DONE.rstrip()
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_JSON = {"Content-Type": "application/json"}
UpstreamError = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True)
class UsageEvent:
    usage: dict[str, Any]
    only_usage: bool
    """True for the final `choices: []` event that exists only to carry the counts."""


def usage_of(event: bytes) -> UsageEvent | None:
    """The token counts an SSE event carries. Only events that mention usage are parsed
    (a quote inside generated text is escaped, so the marker cannot come from content)."""
    if not any(marker in event for marker in _USAGE_MARKERS):
        return None
    try:
        payload = json.loads(event.removeprefix(b"data:").strip())
    except ValueError:
        return None
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    return UsageEvent(usage, only_usage=not payload.get("choices"))


@dataclass
class Tap:
    """What the proxy reports about one request as it happens (audit log, token settlement)."""

    entry: AuditEntry | None = None
    capture: bool = False
    """Write the answer's text in the audit line (only with `audit.log_content`)."""
    keep_text: bool = False
    """Keep the answer's text for the gateway (a guarded rollout's checks and shadow)."""
    on_usage: Callable[[dict[str, Any]], None] | None = None
    text: list[str] = field(default_factory=list)
    scripts: ScriptCounter = field(default_factory=ScriptCounter)
    finish_reason: str | None = None
    ttft_s: float | None = None
    completion_tokens: int | None = None

    def first_event(self, ttft_s: float) -> None:
        self.ttft_s = ttft_s
        if self.entry is not None:
            self.entry.ttft_ms = round(ttft_s * 1000, 2)

    def usage(self, usage: dict[str, Any]) -> None:
        tokens = usage.get("completion_tokens")
        self.completion_tokens = tokens if isinstance(tokens, int) else None
        if self.entry is not None:
            self.entry.prompt_tokens = usage.get("prompt_tokens")
            self.entry.completion_tokens = usage.get("completion_tokens")
        if self.on_usage is not None:
            self.on_usage(usage)

    def failed(self, error: ApiError) -> None:
        if self.entry is not None:
            self.entry.outcome, self.entry.error = error.status, error.code

    def collect(self, payload: dict[str, Any]) -> None:
        """What one event or answer says (chat deltas or messages, or completion text): the
        first choice's finish reason, the scripts of its text, and the text if captured."""
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            first = not choice.get("index")
            if first and isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
            part = choice.get("delta") or choice.get("message") or {}
            piece = part.get("content") if isinstance(part, dict) else None
            piece = piece if piece is not None else choice.get("text")
            if isinstance(piece, str):
                if first:
                    self.scripts.add(piece)
                if self.capture or (first and self.keep_text):
                    self.text.append(piece)

    @property
    def watching(self) -> bool:
        """Whether anyone reads what the answer says (else its events are not parsed)."""
        return self.entry is not None or self.keep_text

    def answer_text(self) -> str:
        return "".join(self.text)

    def finish(self) -> None:
        if self.entry is None:
            return
        self.entry.finish_reason = self.finish_reason
        self.entry.answer_script = self.scripts.mix()
        if self.capture:
            self.entry.response = "".join(self.text)


@dataclass
class Call:
    """One proxied request: where it goes and what the client asked for."""

    model: str
    engine: Engine
    path: str
    payload: dict[str, Any]
    client_wants_usage: bool
    outcome: Outcome
    """Counts the request; the proxy finishes it only for a stream it relays to the end."""
    on_done: Callable[[], None]
    """Called exactly once when the answer is complete or abandoned (releases the turn)."""
    tap: Tap = field(default_factory=Tap)
    deadline: float | None = None
    """Event-loop time by which the answer must be complete (`limits.request_timeout`)."""
    rewriter: CallRewriter | None = None
    """Reads tool calls out of the answer's text (an engine that does not); None: the
    worker's bytes pass as they are."""

    @property
    def prompt_param(self) -> str:
        if self.path.endswith("/embeddings"):
            return "input"
        return "messages" if self.path.endswith("/chat/completions") else "prompt"


class WorkerUnreachable(EngineUnavailable):
    """The worker refused the connection: the request never reached it, so a retry is safe."""


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _timeout(call: Call) -> RequestTimeout:
    return RequestTimeout(f"The request to model {call.model!r} took longer than allowed.")


def _failure(call: Call, exc: BaseException) -> ApiError:
    """A refused connection never reached a worker (503, safe to retry); anything else broke
    off a request the worker had (502)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = call.engine.error or "its worker does not accept connections (it may have crashed)"
        return WorkerUnreachable(f"model {call.model!r} is unavailable: {reason}")
    return EngineFailed(f"the worker for model {call.model!r} failed: {type(exc).__name__}: {exc}")


class Proxy:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def forward(self, request: Request, call: Call) -> Response:
        if not call.payload.get("stream"):
            try:
                return await self._unary(request, call)
            finally:
                call.on_done()
        try:
            return await self._stream(call)
        except BaseException:
            call.on_done()
            raise

    async def _post(self, call: Call) -> tuple[int, bytes]:
        channel = call.engine.channel
        async with channel.session.post(
            channel.url + call.path, data=_body(call.payload), headers=_JSON
        ) as upstream:
            return upstream.status, await upstream.read()

    async def _unary(self, request: Request, call: Call) -> Response:
        try:
            async with asyncio.timeout_at(call.deadline):
                status, body = await unless_disconnected(request, self._post(call))
        except TimeoutError:
            raise _timeout(call) from None
        except UpstreamError as exc:
            raise _failure(call, exc) from None
        if status != 200:
            return self._error(call, status, body)
        answer = json.loads(body)
        if call.rewriter is not None:
            answer = call.rewriter.answer(answer)
            body = _body(answer)
        usage = answer.get("usage")
        self._metrics.record_usage(call.model, usage)
        if isinstance(usage, dict):
            call.tap.usage(usage)
        if call.tap.watching:
            call.tap.collect(answer)
            call.tap.finish()
        return Response(body, 200, media_type="application/json")

    def _error(self, call: Call, status: int, body: bytes) -> Response:
        """A worker's refusal, in Cellar's error shape whichever engine sent it."""
        status, body = normalize_error(status, body, call.model, call.prompt_param)
        return Response(body, status, media_type="application/json")

    async def _stream(self, call: Call) -> Response:
        call.payload["stream_options"] = {"include_usage": True}
        channel = call.engine.channel
        try:
            upstream = await channel.session.post(
                channel.url + call.path, data=_body(call.payload), headers=_JSON
            )
        except UpstreamError as exc:
            raise _failure(call, exc) from None
        if upstream.status != 200:
            try:
                body = await upstream.read()
            except UpstreamError as exc:
                raise _failure(call, exc) from None
            finally:
                upstream.release()
            call.on_done()
            return self._error(call, upstream.status, body)
        outcome = {"status": STATUS_CLIENT_GONE}

        async def close() -> None:
            try:
                if outcome["status"] == 200:
                    upstream.release()  # read to the end: the connection can serve again
                else:
                    upstream.close()  # abandoned: closing it tells the worker to stop
            finally:
                call.on_done()
            call.outcome.finish(outcome["status"])

        return sse_response(self._relay(call, upstream, outcome), close)

    async def _relay(
        self, call: Call, upstream: aiohttp.ClientResponse, outcome: dict[str, int]
    ) -> AsyncIterator[bytes]:
        buffer, first, done = b"", True, False
        try:
            async with asyncio.timeout_at(call.deadline):
                async for chunk in upstream.content.iter_any():
                    buffer += chunk
                    while (end := buffer.find(_EVENT_END)) >= 0:
                        event, buffer = buffer[: end + 2], buffer[end + 2 :]
                        if event.startswith(_DONE_PREFIX):
                            done = True
                            continue
                        if first:
                            ttft = time.monotonic() - call.outcome.started
                            self._metrics.ttft.labels(call.model).observe(ttft)
                            call.tap.first_event(ttft)
                            first = False
                        counted = usage_of(event)
                        if counted is not None:
                            self._metrics.record_usage(call.model, counted.usage)
                            call.tap.usage(counted.usage)
                            if counted.only_usage and not call.client_wants_usage:
                                continue
                        for out in _rewritten(call.rewriter, event):
                            if call.tap.watching:
                                _collect_event(call.tap, out)
                            yield out
        except TimeoutError:
            raise self._broke(call, outcome, _timeout(call)) from None
        except UpstreamError as exc:
            raise self._broke(call, outcome, _failure(call, exc)) from None
        if not done:
            error = EngineFailed(f"the worker for model {call.model!r} ended the stream early")
            raise self._broke(call, outcome, error)
        outcome["status"] = 200
        call.tap.finish()

    @staticmethod
    def _broke(call: Call, outcome: dict[str, int], error: ApiError) -> ApiError:
        outcome["status"] = error.status
        call.tap.failed(error)
        return error


def _rewritten(rewriter: CallRewriter | None, event: bytes) -> list[bytes]:
    """The events to send for one of the worker's."""
    if rewriter is None:
        return [event]
    try:
        payload = json.loads(event.removeprefix(b"data:").strip())
    except ValueError:
        return [event]
    if not isinstance(payload, dict) or "error" in payload:
        return [event]
    return [sse_event(chunk) for chunk in rewriter.chunk(payload)]


def _collect_event(tap: Tap, event: bytes) -> None:
    try:
        payload = json.loads(event.removeprefix(b"data:").strip())
    except ValueError:
        return
    if isinstance(payload, dict):
        tap.collect(payload)
