"""Per-request rules that come from the config: the per-model `max_tokens` cap, and the token
estimate a request is charged against its key's tokens-per-minute before it runs."""

from __future__ import annotations

import math
from typing import Any

from cellar.errors import InvalidRequest
from cellar.features import PROMPT_SAMPLE_CHARS
from cellar.protocol import ChatCompletionRequest, CompletionRequest

Body = ChatCompletionRequest | CompletionRequest
DEFAULT_COMPLETION_ESTIMATE = 256
"""Completion tokens charged up front when a chat request sets no limit (settled later)."""
CHARS_PER_TOKEN = 4


def apply_token_cap(body: Body, cap: int | None) -> None:
    """Refuse more than the model's `max_tokens`; a request that sets none gets the cap."""
    if cap is None:
        return
    param = (
        "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    )
    asked = getattr(body, param)
    if asked is None:
        body.max_tokens = cap
        return
    if asked > cap:
        raise InvalidRequest(
            f"{param} is {asked}, more than this model's limit of {cap} tokens.", param=param
        )


def prompt_content(body: Body) -> Any:
    """The prompt as sent: the messages' text, or the completion prompt."""
    if isinstance(body, ChatCompletionRequest):
        return [{"role": m.role, "content": m.content} for m in body.messages]
    return body.prompt


def prompt_sample(body: Body) -> str:
    """The newest text of the prompt, bounded: the last user turn's text, or the completion
    prompt's end (token ids: none). What the audit line's script mix is measured on."""
    if isinstance(body, CompletionRequest):
        prompt = body.single_prompt()
        return prompt[-PROMPT_SAMPLE_CHARS:] if isinstance(prompt, str) else ""
    for message in reversed(body.messages):
        if message.role != "user" or message.content is None:
            continue
        if isinstance(message.content, str):
            return message.content[-PROMPT_SAMPLE_CHARS:]
        texts = [part.text for part in message.content if part.text is not None]
        return " ".join(texts)[-PROMPT_SAMPLE_CHARS:]
    return ""


def estimate_tokens(body: Body) -> int:
    """Prompt characters / 4 plus the completion tokens the request may produce (in each of
    its `n` choices)."""
    choices = body.n or 1
    if isinstance(body, ChatCompletionRequest):
        chars = sum(len(m.text()) if m.content is not None else 0 for m in body.messages)
        completion = body.token_limit() or DEFAULT_COMPLETION_ESTIMATE
        return math.ceil(chars / CHARS_PER_TOKEN) + completion * choices
    prompt = body.single_prompt()
    if isinstance(prompt, list):
        return len(prompt) + body.token_limit() * choices
    return math.ceil(len(prompt) / CHARS_PER_TOKEN) + body.token_limit() * choices


def estimate_input_tokens(inputs: list[str | list[int]]) -> int:
    """Tokens an embeddings request will use: characters / 4, or the tokens given."""
    return sum(
        len(item) if isinstance(item, list) else math.ceil(len(item) / CHARS_PER_TOKEN)
        for item in inputs
    )
