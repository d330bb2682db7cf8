"""OpenAI response and chunk objects for chat and legacy completions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cellar.engines.llamacpp.jobs import TokenLogprob
from cellar.engines.toolcalls import ParsedCall, message_calls
from cellar.engines.toolcalls import finish_reason as tool_finish

Kind = Literal["chat", "completion"]


@dataclass(frozen=True)
class Choice:
    """One finished choice: its text (without the calls), finish reason, token logprobs and,
    when tools were given, the calls it made."""

    text: str
    finish_reason: str
    logprobs: Sequence[TokenLogprob] = ()
    calls: Sequence[ParsedCall] | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def _chat_entry(item: TokenLogprob) -> dict[str, Any]:
    return {
        "token": item.token,
        "logprob": item.logprob,
        "bytes": list(item.raw),
        "top_logprobs": [
            {"token": text, "logprob": lp, "bytes": list(raw)} for text, raw, lp in item.top
        ],
    }


@dataclass
class Shaper:
    """Builds the objects of one response, all sharing its id and creation time."""

    kind: Kind
    model: str
    logprobs: bool = False
    """Whether the client asked for logprobs (otherwise the field is null)."""
    named_call: bool = False
    """The request named the function to call (OpenAI then finishes with `stop`)."""
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    _text_offsets: dict[int, int] = field(default_factory=dict)
    """Per choice: characters of text sent so far (legacy completions' logprobs)."""

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex}"

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _logprobs(self, items: Sequence[TokenLogprob], index: int) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        if self.kind == "chat":
            return {"content": [_chat_entry(item) for item in items], "refusal": None}
        offsets = []
        for item in items:
            offsets.append(self._text_offsets.get(index, 0))
            self._text_offsets[index] = offsets[-1] + len(item.token)
        return {
            "tokens": [item.token for item in items],
            "token_logprobs": [item.logprob for item in items],
            "top_logprobs": [{text: lp for text, _, lp in item.top} for item in items],
            "text_offset": offsets,
        }

    def chunk(
        self,
        text: str,
        finish_reason: str | None,
        first: bool = False,
        logprobs: Sequence[TokenLogprob] = (),
        index: int = 0,
    ) -> dict[str, Any]:
        """A streamed chunk of choice `index` (`first`: its first, which names the role)."""
        lp = self._logprobs(logprobs, index)
        if self.kind == "chat":
            delta: dict[str, str] = {"role": "assistant"} if first else {}
            if text or first:
                delta["content"] = text
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": lp,
                "finish_reason": finish_reason,
            }
            return {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish_reason}
        return {**self._envelope("text_completion"), "choices": [choice]}

    def delta_chunk(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        """A chat chunk of choice `index` carrying `delta` (text or a tool call's piece)."""
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        return {**self._envelope("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj), "choices": [], "usage": usage.as_dict()}

    def full(self, choices: Sequence[Choice], usage: Usage) -> dict[str, Any]:
        """The whole answer: every choice, in order, and the usage of them all."""
        shaped = []
        for index, choice in enumerate(choices):
            lp = self._logprobs(choice.logprobs, index)
            finish_reason = choice.finish_reason
            if self.kind != "chat":
                shaped.append(
                    {
                        "index": index,
                        "text": choice.text,
                        "logprobs": lp,
                        "finish_reason": finish_reason,
                    }
                )
                continue
            message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
            if choice.calls:
                message["content"] = choice.text if choice.text.strip() else None
                message["tool_calls"] = message_calls(choice.calls)
                finish_reason = tool_finish(finish_reason, len(choice.calls), self.named_call)
            shaped.append(
                {"index": index, "message": message, "logprobs": lp, "finish_reason": finish_reason}
            )
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj), "choices": shaped, "usage": usage.as_dict()}
