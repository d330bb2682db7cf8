"""A model inside the worker: loading, prompts, chat templates and context limits."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import llama_cpp

from cellar.chat import ChatTemplate
from cellar.engines.llamacpp.native import (
    BatchedContext,
    ContextShape,
    NativeAdapter,
    NativeError,
    NativeModel,
)
from cellar.engines.llamacpp.spec import WorkerSpec
from cellar.errors import ContextLengthExceeded, InvalidRequest, ToolError
from cellar.protocol import ChatMessage
from cellar.toolcalls import FunctionSpec, hermes_turns, renders_tools

Functions = Sequence[FunctionSpec]

GGUF_TEMPLATE_KEY = "tokenizer.chat_template"


class ModelLoadError(ToolError):
    """The GGUF could not be loaded; the message names the file."""


@dataclass
class Loaded:
    """Everything the worker holds for its model."""

    model: LoadedModel
    native: NativeModel
    context: BatchedContext
    adapters: dict[str, NativeAdapter] = field(default_factory=dict)
    """Served name (`MODEL:ADAPTER`) -> its loaded LoRA adapter."""

    def close(self) -> None:
        self.context.close()
        for adapter in self.adapters.values():
            adapter.close()
        self.native.close()


def open_vocab(path: Path) -> llama_cpp.Llama:
    """The GGUF's tokenizer (vocabulary only), or ModelLoadError naming the file."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"llama.cpp could not load {path}: the file is corrupt, truncated or not a "
            f"supported GGUF model ({exc})"
        ) from None


def load(spec: WorkerSpec) -> Loaded:
    """Tokenizer, weights and a batched context for `spec`, or ModelLoadError saying why."""
    path = Path(spec.model_path)
    vocab = open_vocab(path)
    try:
        native = NativeModel(path, spec.n_gpu_layers)
        shape = ContextShape(spec.n_ctx, spec.n_parallel, spec.n_batch, spec.threads())
        context = BatchedContext(native, shape)
        adapters = {a.name: NativeAdapter(native, a.path, a.scale) for a in spec.adapters}
    except NativeError as exc:
        raise ModelLoadError(str(exc)) from None
    return Loaded(LoadedModel(spec, vocab), native, context, adapters)


def _turn(message: ChatMessage, text: str) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": message.role, "content": text}
    if message.name:
        turn["name"] = message.name
    if message.tool_calls:  # for a template that renders tools itself
        turn["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id:
        turn["tool_call_id"] = message.tool_call_id
    return turn


def _turns(messages: list[ChatMessage], texts: list[str]) -> list[dict[str, Any]]:
    return [_turn(m, text) for m, text in zip(messages, texts, strict=True)]


class LoadedModel:
    """Turns requests into prompt tokens, and tokens back into bytes, for one model."""

    def __init__(self, spec: WorkerSpec, vocab: llama_cpp.Llama) -> None:
        self.name = spec.name
        self.n_ctx = spec.n_ctx
        self._vocab = vocab
        self.n_vocab = vocab.n_vocab()
        self._bos = vocab.token_bos()
        self._add_bos = vocab.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
        source = spec.chat_template or vocab.metadata.get(GGUF_TEMPLATE_KEY)
        self.template = (
            ChatTemplate(
                source,
                bos_token=self._special(self._bos),
                eos_token=self._special(vocab.token_eos()),
            )
            if source
            else None
        )
        self.piece = lru_cache(maxsize=1 << 16)(self._piece)
        """Bytes of one generated token (thread-safe; cached, as tokens repeat a lot)."""

    def _piece(self, token: int) -> bytes:
        return self._vocab.detokenize([token])

    def _special(self, token: int) -> str:
        if token < 0:
            return ""
        return self._vocab.detokenize([token], special=True).decode("utf-8", "replace")

    def encode(self, text: str) -> list[int]:
        """Tokenize prompt text (special tokens parsed) with one BOS if the model wants it."""
        return self._with_bos(self._tokens(text, special=True))

    def _tokens(self, text: str, special: bool) -> list[int]:
        return self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _with_bos(self, tokens: list[int]) -> list[int]:
        if self._add_bos and self._bos >= 0 and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return tokens

    def _has_control_text(self, text: str) -> bool:
        """Whether `text` holds the text of a special token (`<end_of_turn>`, `<bos>`...)."""
        return bool(text) and self._tokens(text, special=True) != self._tokens(text, False)

    def chat_prompt(self, messages: list[ChatMessage], functions: Functions = ()) -> list[int]:
        """The prompt of a conversation; `functions`: those the model may call now."""
        if self.template is None:
            raise InvalidRequest(
                f"model {self.name!r} has no chat template: its GGUF carries none and its config "
                "sets no `chat_template`; use /v1/completions or configure one",
                param="messages",
            )
        tools = None
        if renders_tools(self.template.source):
            tools = [
                {"type": "function", "function": f.model_dump(exclude_none=True)} for f in functions
            ]
        elif functions or any(m.tool_calls or m.role == "tool" for m in messages):
            turns = hermes_turns(messages, list(functions))
            messages = [ChatMessage.model_validate(turn) for turn in turns]
        texts = [m.text() for m in messages]
        if not any(self._has_control_text(text) for text in texts):
            return self.encode(self.template.render(_turns(messages, texts), tools=tools))
        # Someone's text spells a control token: only the template's own markers may be
        # special, so each text is tokenized as text where the template puts it.
        fence = f"\ue000{secrets.token_hex(8)}:"
        places = [f"{fence}{i}\ue001" for i in range(len(texts))]
        marked = self.template.render(_turns(messages, places), tools=tools)
        tokens: list[int] = []
        for n, part in enumerate(re.split(re.escape(fence) + "(\\d+)\ue001", marked)):
            tokens += self._tokens(texts[int(part)], False) if n % 2 else self._tokens(part, True)
        return self._with_bos(tokens)

    def completion_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.encode(prompt)
        bad = [t for t in prompt if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidRequest(
                f"prompt has token ids outside the vocabulary (0..{self.n_vocab - 1}): {bad[:5]}",
                param="prompt",
            )
        return list(prompt)

    def completion_budget(self, prompt_tokens: int, requested: int | None, param: str) -> int:
        """How many tokens may be generated; ContextLengthExceeded if the request cannot fit."""
        if prompt_tokens == 0:
            raise InvalidRequest("the prompt is empty", param=param)
        if requested is None and prompt_tokens < self.n_ctx:
            return self.n_ctx - prompt_tokens
        total = prompt_tokens + (requested or 0)
        if total > self.n_ctx or prompt_tokens >= self.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens. However, you "
                f"requested {total} tokens ({prompt_tokens} in the {param}, {requested or 0} "
                f"in the completion). Please reduce the length of the {param} or completion.",
                param=param,
            )
        assert requested is not None
        return requested
