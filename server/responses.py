"""`POST /v1/responses`, served by the chat path: the request becomes a chat request
(cellar/responses.py), goes through the same service (keys, limits, audit, metrics, the
engine), and its answer, whole or streamed, is reshaped into a response and the Responses
event sequence.

`store: true` (the default, as OpenAI's) keeps the response and its conversation in the
gateway's memory for `STORE_TTL_S`, visible only to the API key that made it, so
`previous_response_id` can continue it; at most `STORE_MAX` are kept (the oldest go first).
Nothing is written to disk, and a restart forgets them.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from cellar.errors import NotFound, PreviousResponseNotFound
from cellar.responses import ResponsesRequest
from cellar.server.auth import OPEN, Principal
from cellar.server.service import CHAT_PATH, CompletionService
from cellar.web import SSE_HEADERS

STORE_TTL_S = 3600.0
STORE_MAX = 1024
STORE_MAX_BYTES = 256 * 2**20
"""Of stored conversations in all (as JSON), so stored responses cannot fill the memory."""


@dataclass
class Stored:
    owner: str
    response: dict[str, Any]
    conversation: list[dict[str, Any]]
    """The chat messages up to and including this response's output."""
    expires: float
    size: int


class ResponseStore:
    """Responses kept for `previous_response_id`: in memory, per API key, for a while."""

    def __init__(
        self,
        ttl_s: float = STORE_TTL_S,
        max_entries: int = STORE_MAX,
        max_bytes: int = STORE_MAX_BYTES,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, Stored] = OrderedDict()

    def put(self, owner: str, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        """Keep a response; the oldest go when there are too many, or too many bytes."""
        self._expire()
        size = len(json.dumps([response, conversation], ensure_ascii=False))
        expires = time.monotonic() + self._ttl_s
        self._entries[response["id"]] = Stored(owner, response, conversation, expires, size)
        self._bytes += size
        while len(self._entries) > self._max or self._bytes > self._max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, stored = self._entries.popitem(last=False)
        self._bytes -= stored.size

    def get(self, owner: str, response_id: str) -> Stored | None:
        """The stored response, if it exists, has not expired and `owner` made it."""
        self._expire()
        stored = self._entries.get(response_id)
        return stored if stored is not None and stored.owner == owner else None

    def delete(self, owner: str, response_id: str) -> bool:
        if self.get(owner, response_id) is None:
            return False
        self._bytes -= self._entries.pop(response_id).size
        return True

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.expires > now:
                return
            self._drop_oldest()


def owner_of(request: Request) -> str:
    """Whose responses a request may see: its API key's (everyone's when keys are off)."""
    principal: Principal = getattr(request.state, "principal", OPEN)
    return principal.key_id or principal.name


def _dumped(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    details = usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", 0),
    }


@dataclass
class Shaper:
    """The objects of one response: its envelope, its output items, its final state."""

    body: ResponsesRequest
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))
    output: list[dict[str, Any]] = field(default_factory=list)

    def response(
        self, status: str, usage: dict[str, Any] | None = None, finish: str | None = None
    ) -> dict[str, Any]:
        body = self.body
        incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if incomplete and status == "completed" else status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "model": body.model,
            "output": self.output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "store": body.store,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": {"type": "text"}}
            if body.text is None or body.text.format is None
            else {"format": body.text.format.model_dump(by_alias=True, exclude_none=True)},
            "tool_choice": _dumped(body.tool_choice) if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": "disabled",
            "usage": _usage(usage),
            "user": body.user,
        }

    @staticmethod
    def message(text: str, status: str = "completed") -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": []}
        return {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex}",
            "status": status,
            "role": "assistant",
            "content": [part] if status == "completed" else [],
        }

    @staticmethod
    def call(call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": f"fc_{uuid.uuid4().hex}",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": status,
        }

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """The response for a whole chat answer."""
        choice = answer["choices"][0]
        message = choice.get("message") or {}
        if message.get("content"):
            self.output.append(self.message(message["content"]))
        for call in message.get("tool_calls") or []:
            function = call["function"]
            self.output.append(self.call(call["id"], function["name"], function["arguments"]))
        return self.response("completed", answer.get("usage"), choice.get("finish_reason"))


def conversation_after(
    before: list[dict[str, Any]], body: ResponsesRequest, output: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What a later response continues from: the conversation so far, this input, and this
    output as an assistant turn (the instructions are this response's alone)."""
    text = "".join(
        part["text"] for item in output if item["type"] == "message" for part in item["content"]
    )
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in output
        if item["type"] == "function_call"
    ]
    turn: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        turn["tool_calls"] = calls
    return [*before, *body.input_messages(), turn]


class ResponseEvents:
    """The Responses event sequence, built from the chat path's stream chunk by chunk."""

    def __init__(self, shaper: Shaper) -> None:
        self._shaper = shaper
        self._sequence = 0
        self._open: dict[str, Any] | None = None
        """The output item being written (a message or a function call)."""
        self._text = ""
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.final: dict[str, Any] = {}
        """The whole response, once the stream has ended."""

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def start(self) -> list[bytes]:
        response = self._shaper.response("in_progress")
        return [
            self.event("response.created", response=response),
            self.event("response.in_progress", response=response),
        ]

    def _index(self) -> int:
        return len(self._shaper.output)

    def _close(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._index()
        events = []
        if item["type"] == "message":
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            part = {"type": "output_text", "text": self._text, "annotations": []}
            events += [
                self.event("response.output_text.done", **where, text=self._text),
                self.event("response.content_part.done", **where, part=part),
            ]
            item = {**item, "status": "completed", "content": [part]}
        else:
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
            item = {**item, "status": "completed"}
        self._shaper.output.append(item)
        return [*events, self.event("response.output_item.done", output_index=index, item=item)]

    def _text_delta(self, text: str) -> list[bytes]:
        events = []
        if self._open is None or self._open["type"] != "message":
            events += self._close()
            self._open, self._text = self._shaper.message("", "in_progress"), ""
            item_id = self._open["id"]
            events.append(
                self.event(
                    "response.output_item.added", output_index=self._index(), item=self._open
                )
            )
            part = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": item_id, "output_index": self._index(), "content_index": 0}
            events.append(self.event("response.content_part.added", **where, part=part))
        self._text += text
        where = {"item_id": self._open["id"], "output_index": self._index(), "content_index": 0}
        return [*events, self.event("response.output_text.delta", **where, delta=text)]

    def _call_delta(self, call: dict[str, Any]) -> list[bytes]:
        events = []
        function = call.get("function") or {}
        if call.get("id"):
            events += self._close()
            self._open = self._shaper.call(call["id"], function.get("name", ""), "", "in_progress")
            events.append(
                self.event(
                    "response.output_item.added", output_index=self._index(), item=self._open
                )
            )
        piece = function.get("arguments") or ""
        if piece and self._open is not None and self._open["type"] == "function_call":
            self._open["arguments"] += piece
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=self._open["id"],
                    output_index=self._index(),
                    delta=piece,
                )
            )
        return events

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events for one chat chunk."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events: list[bytes] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                events += self._close()
        return events

    def end(self) -> list[bytes]:
        events = self._close()
        self.final = self._shaper.response("completed", self.usage, self.finish)
        status = self.final["status"]
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*events, self.event(kind, response=self.final)]

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        failed = self._shaper.response("failed")
        failed["error"] = {"code": error.get("code"), "message": error.get("message")}
        fields = {key: error.get(key) for key in ("code", "message", "param")}
        return [self.event("error", **fields), self.event("response.failed", response=failed)]


def _events(raw: bytes) -> tuple[list[Any], bytes]:
    """The JSON payloads of the complete SSE events in `raw`, and what is left."""
    payloads = []
    while (end := raw.find(b"\n\n")) >= 0:
        event, raw = raw[:end], raw[end + 2 :]
        data = event.removeprefix(b"data:").strip()
        if data and data != b"[DONE]":
            with contextlib.suppress(ValueError):
                payloads.append(json.loads(data))
    return payloads, raw


async def _reshape(
    chat_stream: AsyncIterable[Any], events: ResponseEvents, keep: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The chat stream's chunks as Responses events; closing this closes the chat stream
    (which stops the generation behind it)."""
    for event in events.start():
        yield event
    buffer = b""
    try:
        async for raw in chat_stream:
            data = raw.encode() if isinstance(raw, str) else bytes(raw)
            payloads, buffer = _events(buffer + data)
            for payload in payloads:
                if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                    for event in events.failed(payload["error"]):
                        yield event
                    return
                for event in events.chunk(payload):
                    yield event
    finally:
        close = getattr(chat_stream, "aclose", None)
        if close is not None:
            await close()
    for event in events.end():
        yield event
    keep()


class Responses:
    """The `/v1/responses` routes' work: a response served by the chat path, and the store."""

    def __init__(self, service: CompletionService, store: ResponseStore | None = None) -> None:
        self._service = service
        self.store = store or ResponseStore()

    def _history(self, request: Request, body: ResponsesRequest) -> list[dict[str, Any]]:
        if body.previous_response_id is None:
            return []
        stored = self.store.get(owner_of(request), body.previous_response_id)
        if stored is None:
            raise PreviousResponseNotFound(
                f"Previous response with id {body.previous_response_id!r} not found: responses "
                f"are kept {STORE_TTL_S / 60:g} minutes, for the API key that made them, and "
                "only with `store: true`",
                param="previous_response_id",
            )
        return stored.conversation

    async def create(self, request: Request, body: ResponsesRequest) -> Response:
        history = self._history(request, body)
        chat = body.chat(history)
        shaper = Shaper(body)
        answer = await self._service.complete(request, CHAT_PATH, chat)
        owner = owner_of(request)

        def keep(response: dict[str, Any]) -> None:
            if body.store:
                self.store.put(owner, response, conversation_after(history, body, shaper.output))

        if not body.stream:
            if answer.status_code != 200:
                return answer
            response = shaper.whole(json.loads(bytes(answer.body)))
            keep(response)
            return JSONResponse(response, headers=_passed_headers(answer))
        if not isinstance(answer, StreamingResponse):
            return answer  # refused before streaming began
        events = ResponseEvents(shaper)
        stream = _reshape(answer.body_iterator, events, lambda: keep(events.final))
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **_passed_headers(answer)},
        )

    def get(self, request: Request, response_id: str) -> dict[str, Any]:
        stored = self.store.get(owner_of(request), response_id)
        if stored is None:
            raise NotFound(f"No response with id {response_id!r}", param="response_id")
        return stored.response

    def delete(self, request: Request, response_id: str) -> dict[str, Any]:
        if not self.store.delete(owner_of(request), response_id):
            raise NotFound(f"No response with id {response_id!r}", param="response_id")
        return {"id": response_id, "object": "response.deleted", "deleted": True}


_PASSED = ("x-ratelimit-", "x-cellar-")


def _passed_headers(answer: Response) -> dict[str, str]:
    """The chat answer's rate-limit and version headers, for the response."""
    return {k: v for k, v in answer.headers.items() if k.lower().startswith(_PASSED)}
