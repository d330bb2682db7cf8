"""Tool calls in the Hermes format (cellar/toolcalls.py): the grammar that makes them
well-formed, and the parser that reads them out of generated text, streamed or whole.

The grammar comes from the functions' parameter schemas through the same bounded
schema-to-GBNF code as `response_format`: each call is `<tool_call>`, a JSON object naming one
of the functions with arguments that validate against its schema, and `</tool_call>`. With
`required` or a named function the whole answer follows it; with `auto` it applies from the
moment the model writes `<tool_call>` (a lazy grammar), so text stays free and calls do not.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llama_cpp.llama_grammar import json_schema_to_gbnf

from cellar.engines.grammar import (
    _LOOSE_CHAR,
    _STRICT_CHAR,
    MAX_GRAMMAR_BYTES,
    Grammar,
    check_schema,
)
from cellar.errors import InvalidRequest, UnsupportedParameter
from cellar.toolcalls import CALL_CLOSE, CALL_OPEN, FunctionSpec, ToolRequest


@dataclass(frozen=True)
class ToolGrammar(Grammar):
    """The grammar of the calls a request allows (lazy for `auto`)."""

    call: str = ""
    """The grammar of one call's JSON alone (between `<tool_call>\n` and `\n</tool_call>`)."""


def check_tools_served(request: ToolRequest, tool_format: str) -> None:
    """At the gateway: tools only for a model configured to take them, with schemas whose
    grammar stays bounded."""
    if tool_format == "none":
        raise UnsupportedParameter(
            "this model is configured with `tool_format: none`: it takes no `tools`",
            param="tools",
        )
    check_tool_schemas(request)


def check_tool_schemas(request: ToolRequest) -> None:
    """Refuses, before anything is built, parameter schemas whose grammar could explode: each
    on its own, and all of them together within one schema's bounds."""
    for index, tool in enumerate(request.tools or []):
        check_schema(tool.function.parameters_schema(), f"tools[{index}].function.parameters")
    check_schema(_calls_schema(request.callable_tools()), "tools")


def _calls_schema(functions: list[FunctionSpec]) -> dict[str, Any]:
    """One call's JSON: a function's name and arguments that validate against its schema."""
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": f.parameters_schema()},
                "required": ["name", "arguments"],
            }
            for f in functions
        ]
    }


def tool_grammar(request: ToolRequest) -> ToolGrammar | None:
    """The grammar of the calls `request` allows; None when it allows none. Bounded, but not
    instant: call it off an event loop."""
    functions = request.callable_tools()
    if not functions:
        return None
    check_tool_schemas(request)
    try:
        body = json_schema_to_gbnf(json.dumps(_calls_schema(functions)))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
        raise InvalidRequest(f"cannot enforce these tools' schemas: {exc}", param="tools") from None
    call = body.replace(_LOOSE_CHAR, _STRICT_CHAR)
    calls = "call" if request.one_call_only() else 'call ("\\n" call)*'
    grammar = (
        f"root ::= {calls}\n"
        f'call ::= "{CALL_OPEN}\\n" tool-call-json "\\n{CALL_CLOSE}"\n'
        + re.sub(r"^root ::=", "tool-call-json ::=", call, count=1, flags=re.M)
    )
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(
            f"the tools' grammar would be larger than {MAX_GRAMMAR_BYTES} bytes", param="tools"
        )
    return ToolGrammar(grammar, CALL_OPEN if request.tool_mode() == "auto" else None, call)


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_TAIL = re.compile(r"\s*\}\s*" + re.escape(CALL_CLOSE))
MAX_HEAD_CHARS = 512
"""Text after `<tool_call>` within which the function's name must be known (else: text)."""


@dataclass(frozen=True)
class Event:
    """Text for `content`, the start of call `index` (its function's name), or a piece of
    call `index`'s arguments."""

    kind: Literal["text", "call", "arguments"]
    text: str
    index: int = 0


@dataclass
class _Arguments:
    """Finds where a JSON value ends, one character at a time."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False

    def ends_at(self, char: str) -> bool:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
            return False
        if char == '"':
            self.in_string, self.started = True, True
        elif char in "{[":
            self.depth, self.started = self.depth + 1, True
        elif char in "}]":
            self.depth -= 1
            return self.depth <= 0
        elif not char.isspace():
            self.started = True
        return False


def _held_back(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


@dataclass
class CallParser:
    """Splits generated text into content and calls as it arrives, never letting a marker
    into the content: text that may begin `<tool_call>` waits for the next piece."""

    _buffer: str = ""
    _state: Literal["text", "head", "arguments", "tail"] = "text"
    _calls: int = 0
    _after_call: bool = False
    _scan: _Arguments = field(default_factory=_Arguments)

    @property
    def calls(self) -> int:
        """Calls started so far."""
        return self._calls

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> list[Event]:
        """The rest, at the end of generation (a call cut short keeps what it has)."""
        events: list[Event] = []
        if self._state == "text" and self._buffer:
            self._text(events, self._buffer)
        elif self._state == "head":
            self._text(events, CALL_OPEN + self._buffer)
        self._buffer = ""
        return events

    def _text(self, events: list[Event], text: str) -> None:
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        if text:
            events.append(Event("text", text))

    def _step(self, events: list[Event]) -> bool:
        buffer = self._buffer
        if self._state == "text":
            start = buffer.find(CALL_OPEN)
            if start < 0:
                keep = _held_back(buffer, CALL_OPEN)
                self._text(events, buffer[: len(buffer) - keep])
                self._buffer = buffer[len(buffer) - keep :]
                return False
            self._text(events, buffer[:start])
            self._buffer, self._state = buffer[start + len(CALL_OPEN) :], "head"
            return True
        if self._state == "head":
            match = _HEAD.match(buffer)
            if match is None:
                if len(buffer) > MAX_HEAD_CHARS:  # not a call after all
                    self._state, self._buffer = "text", ""
                    self._text(events, CALL_OPEN + buffer)
                return False
            name = json.loads(f'"{match.group(1)}"')
            events.append(Event("call", name, self._calls))
            self._buffer, self._state, self._scan = buffer[match.end() :], "arguments", _Arguments()
            self._calls += 1
            return True
        if self._state == "arguments":
            if not self._scan.started:
                buffer = self._buffer = buffer.lstrip()
            for position, char in enumerate(buffer):
                if self._scan.ends_at(char):
                    events.append(Event("arguments", buffer[: position + 1], self._calls - 1))
                    self._buffer, self._state = buffer[position + 1 :], "tail"
                    return True
            if buffer:
                events.append(Event("arguments", buffer, self._calls - 1))
            self._buffer = ""
            return False
        match = _TAIL.match(buffer)
        if match is not None:
            self._buffer, self._state, self._after_call = buffer[match.end() :], "text", True
            return True
        rest = buffer.lstrip()
        if rest and (rest[0] != "}" or not CALL_CLOSE.startswith(rest[1:].lstrip())):
            self._state = "text"  # not the end of a call: the rest is text
            return True
        return False


@dataclass
class ParsedCall:
    name: str
    arguments: str = ""


def parse_calls(text: str) -> tuple[str, list[ParsedCall]]:
    """A whole answer's content and calls (what the streamed events add up to)."""
    parser = CallParser()
    content: list[str] = []
    calls: list[ParsedCall] = []
    for event in parser.feed(text) + parser.close():
        if event.kind == "text":
            content.append(event.text)
        elif event.kind == "call":
            calls.append(ParsedCall(event.text))
        else:
            calls[event.index].arguments += event.text
    return "".join(content), calls


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def finish_reason(reason: str, calls: int, named: bool) -> str:
    """OpenAI's finish reason for an answer that made calls: `tool_calls`, but `stop` when
    the function was named, and `length` when cut short."""
    return "tool_calls" if calls and reason == "stop" and not named else reason


def message_calls(calls: Sequence[ParsedCall]) -> list[dict[str, Any]]:
    """A whole answer's `tool_calls`."""
    return [
        {
            "id": call_id(),
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for c in calls
    ]


def event_delta(event: Event) -> dict[str, Any]:
    """The `delta` of a streamed chunk for one parser event."""
    if event.kind == "text":
        return {"content": event.text}
    if event.kind == "call":
        function = {"name": event.text, "arguments": ""}
        call = {"index": event.index, "id": call_id(), "type": "function", "function": function}
        return {"tool_calls": [call]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


class CallRewriter:
    """Reads the calls out of an engine's plain-text chat answers (vLLM's, which the gateway
    asks for under Cellar's grammar): the whole answer, or its stream chunk by chunk."""

    def __init__(self, named: bool) -> None:
        self._named = named
        self._parsers: dict[int, CallParser] = {}

    def answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        for choice in answer.get("choices") or []:
            message = choice.get("message") or {}
            content, calls = parse_calls(message.get("content") or "")
            message["content"] = content
            if calls:
                message["content"] = content if content.strip() else None
                message["tool_calls"] = message_calls(calls)
                choice["finish_reason"] = finish_reason(
                    choice.get("finish_reason") or "stop", len(calls), self._named
                )
        return answer

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks to send for one of the engine's (one per text piece or call delta)."""
        choices = chunk.get("choices") or []
        if not choices:
            return [chunk]
        envelope = {key: value for key, value in chunk.items() if key not in ("choices", "usage")}
        out: list[dict[str, Any]] = []

        def emit(index: int, delta: dict[str, Any], **fields: Any) -> None:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            out.append({**envelope, "choices": [{**choice, **fields}]})

        for choice in choices:
            index = choice.get("index", 0)
            parser = self._parsers.setdefault(index, CallParser())
            delta = choice.get("delta") or {}
            reason = choice.get("finish_reason")
            if "role" in delta:
                emit(index, {"role": delta["role"], "content": ""})
            events = parser.feed(delta.get("content") or "")
            for event in events + (parser.close() if reason else []):
                emit(index, event_delta(event))
            if choice.get("logprobs"):
                emit(index, {}, logprobs=choice["logprobs"])
            if reason:
                emit(index, {}, finish_reason=finish_reason(reason, parser.calls, self._named))
        if "usage" in chunk and out:
            out[-1]["usage"] = chunk["usage"]
        return out
