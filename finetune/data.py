"""Training data: JSONL read and checked line by line, then tokenized with the loss masked.

Two shapes are accepted on each line:
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`, rendered
  with the chat template the server uses for the model; the loss is on the assistant turns only
  (their text and the template's end-of-turn marker). With OpenAI's `tools` beside the messages,
  assistant `tool_calls` and `tool` turns, the example is written as the server writes tool
  conversations (the Hermes format), so the adapter learns to call as it will be served;
- completion: `{"prompt": "...", "completion": "..."}`, the text as `/v1/completions` sees it
  (BOS, then the prompt); the loss is on the completion and the EOS after it.

Every line is checked before anything trains; errors name the file, the line and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cellar.chat import ChatTemplate
from cellar.errors import ApiError, ToolError
from cellar.protocol import ChatCompletionRequest
from cellar.toolcalls import hermes_turns

ROLES = ("system", "user", "assistant")
IGNORE = -100
"""The label of a token that carries no loss."""
MAX_ERRORS = 20


class DataError(ToolError):
    """The data cannot be used; the message lists every problem found (file:line: what)."""


@dataclass(frozen=True)
class Example:
    line: int
    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    completion: str | None = None


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _check_messages(messages: Any) -> tuple[tuple[dict[str, str], ...], str | None]:
    if not isinstance(messages, list) or not messages:
        return (), "`messages` must be a non-empty list"
    out = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            return (), f"{where} is not an object"
        role, content = message.get("role"), message.get("content")
        if role is None:
            return (), f"{where} has no role"
        if role not in ROLES:
            return (), f"{where}.role {role!r} is not one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return (), f"{where}.content must be a string"
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        return (), "empty example: no assistant message with text to learn"
    return tuple(out), None


def _plain(record: dict[str, Any]) -> Any:
    """A record's messages; with `tools`, `tool_calls` or `tool` turns, written as the server
    writes them for the model (the Hermes turns of cellar/toolcalls.py), so an adapter learns
    exactly the text it is served with."""
    messages = record["messages"]
    tools = record.get("tools")
    uses_tools = isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages
    )
    if tools is None and not uses_tools:
        return messages
    request = ChatCompletionRequest.model_validate(
        {"model": "training", "messages": messages, "tools": tools}
    )
    request.check_supported()
    return hermes_turns(request.messages, request.callable_tools())


def _reason(exc: ValidationError | ApiError) -> str:
    if isinstance(exc, ApiError):
        return f"{exc.param}: {exc}" if exc.param else str(exc)
    first = exc.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"


def _parse(line: int, text: str) -> tuple[Example | None, str | None]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"bad JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(record, dict):
        return None, "each line must be a JSON object"
    if "messages" in record:
        try:
            plain = _plain(record)
        except (ValidationError, ApiError) as exc:
            return None, f"bad tools or tool calls: {_reason(exc)}"
        messages, problem = _check_messages(plain)
        return (Example(line, messages=messages), None) if problem is None else (None, problem)
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return None, "`prompt` and `completion` must both be strings"
        if not completion.strip():
            return None, "empty example: the completion is empty"
        return Example(line, prompt=prompt, completion=completion), None
    return None, "expected `messages`, or `prompt` and `completion`"


def read_examples(path: Path) -> list[Example]:
    """Every example of a JSONL file; DataError listing each bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    examples, problems = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        example, problem = _parse(number, text)
        if problem is not None:
            problems.append(f"{path}:{number}: {problem}")
        elif example is not None:
            examples.append(example)
    if problems:
        raise DataError(_listing(problems))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _listing(problems: list[str]) -> str:
    shown = problems[:MAX_ERRORS]
    more = len(problems) - len(shown)
    return "\n".join(shown + ([f"... and {more} more"] if more else []))


Tokenize = Callable[[str], list[int]]


class Encoder:
    """Examples -> token ids and labels, exactly as the server would prompt the model."""

    def __init__(
        self, tokenize: Tokenize, template: ChatTemplate | None, *, bos: int, eos: int
    ) -> None:
        self._tokenize = tokenize
        self._template = template
        self._bos, self._eos = bos, eos

    def _with_bos(self, ids: list[int]) -> list[int]:
        return ids if ids[:1] == [self._bos] else [self._bos, *ids]

    def encode(self, example: Example) -> Encoded:
        if example.messages is None:
            assert example.prompt is not None and example.completion is not None
            prompt = self._with_bos(self._tokenize(example.prompt))
            answer = [*self._tokenize(example.completion), self._eos]
            return Encoded(prompt + answer, [IGNORE] * len(prompt) + answer)
        if self._template is None:
            raise DataError("chat examples need a chat template (--chat-template)")
        messages = list(example.messages)
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._template.render(messages[:index], add_generation_prompt=True)
            after = self._template.render(messages[: index + 1], add_generation_prompt=False)
            if not before.startswith(done) or not after.startswith(before):
                raise DataError(f"line {example.line}: the chat template does not render turns")
            context = self._tokenize(before[len(done) :])
            answer = self._tokenize(after[len(before) :])
            ids += context + answer
            labels += [IGNORE] * len(context) + answer
            done = after
        if ids[:1] != [self._bos]:
            ids, labels = [self._bos, *ids], [IGNORE, *labels]
        return Encoded(ids, labels)


def encode_all(
    encoder: Encoder, examples: list[Example], path: Path, max_length: int
) -> list[Encoded]:
    """Every example encoded; DataError naming each one longer than `max_length` tokens."""
    encoded, problems = [], []
    for example in examples:
        item = encoder.encode(example)
        if len(item.input_ids) > max_length:
            problems.append(
                f"{path}:{example.line}: {len(item.input_ids)} tokens, longer than the "
                f"context allowed for training ({max_length}; --max-length)"
            )
        elif item.trained_tokens == 0:
            problems.append(f"{path}:{example.line}: empty example: nothing to learn")
        encoded.append(item)
    if problems:
        raise DataError(_listing(problems))
    return encoded
