"""OpenAI request schemas, shared by the gateway (which validates) and the workers.

Unknown fields are kept (`extra="allow"`): the gateway forwards them, so an engine-specific
extension (vLLM's `top_k`, say) reaches the engine that understands it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellar.errors import ContextLengthExceeded, InvalidRequest, UnsupportedParameter
from cellar.toolcalls import MAX_TOOLS, ToolCall, ToolRequest, check_conversation

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 512
MAX_CHOICES = 16
"""`n`: choices of one request (each takes a sequence slot)."""
MAX_LOGIT_BIAS = 1024
"""Entries of one request's `logit_bias`."""
"""Characters of one stop string (each engine looks for every one after every token)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    priority: int | None = Field(
        None,
        ge=-100,
        le=1000,
        description="Place in the model's queue (vLLM's name): lower goes first; above 0 is "
        "background work, which takes only the slots interactive requests leave. Default: the "
        "key's; a key other than an admin's may not go below its own.",
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = Field(None, max_length=256)

    def text(self) -> str:
        """The message's text; non-text content parts are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        pieces = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise UnsupportedParameter(
                    f"content parts of type {part.type!r} are not supported; use text",
                    param="messages",
                )
            pieces.append(part.text)
        return "".join(pieces)


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """Structured output: `json_object` (any JSON object) or `json_schema` (this schema)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("`json_schema` is required when type is 'json_schema'")
        return self


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
StopField = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)] | None


class _SamplingRequest(_Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopField = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]],
            Field(max_length=MAX_LOGIT_BIAS),
        ]
        | None
    ) = None
    """Token id (as a string) -> a bias from -100 (never) to 100 (always), added to its logit."""
    # Extensions with vLLM's names:
    top_k: int | None = Field(None, ge=-1, description="0 or -1: no top-k truncation")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    ignore_eos: bool = Field(False, description="generate max_tokens even past end-of-text")

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isascii() or not key.isdigit() or len(key) > 9:
                raise ValueError(f"{key!r} is not a token id (a non-negative integer)")
        return value

    def biases(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs."""
        return tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items())

    def check_supported(self) -> None:
        """Refuse parameters that are valid OpenAI but not served yet, with a clear 400."""
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            if getattr(self, name, None) is not None:
                raise UnsupportedParameter(
                    f"`{name}` is for /v1/chat/completions; legacy completions take no tools",
                    param=name,
                )

    def top_logprob_count(self) -> int | None:
        """None: no logprobs wanted; else how many alternatives per token."""
        return None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def wants_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(ToolRequest, _SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("`top_logprobs` requires `logprobs` to be true")
        return self

    def top_logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def check_supported(self) -> None:
        self.check_tools()
        check_conversation(self.messages)
        calls = self.tool_mode() != "none"
        if calls and self.response_format is not None and self.response_format.type != "text":
            raise UnsupportedParameter(
                "`response_format` and tool calls cannot be combined; send `tool_choice: "
                "none`, or leave `response_format` out",
                param="response_format",
            )

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


PromptField = (
    str
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(_SamplingRequest):
    prompt: PromptField
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)

    def top_logprob_count(self) -> int | None:
        return self.logprobs

    def check_supported(self) -> None:
        super().check_supported()
        prompt = self.prompt
        if isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int):
            raise UnsupportedParameter(
                "several prompts in one request are not supported yet; send one", param="prompt"
            )
        if self.echo:
            raise UnsupportedParameter("`echo` is not supported yet", param="echo")
        if self.suffix:
            raise UnsupportedParameter("`suffix` is not supported yet", param="suffix")
        if self.best_of is not None and self.best_of > 1:
            raise UnsupportedParameter("`best_of` > 1 is not supported yet", param="best_of")

    def token_limit(self) -> int:
        """OpenAI's legacy completions default to 16 tokens."""
        return self.max_tokens or 16

    def single_prompt(self) -> str | list[int]:
        """The one prompt, as text or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        first = prompt[0]
        if isinstance(first, int):
            return [int(t) for t in prompt if isinstance(t, int)]
        return first


MAX_EMBEDDING_INPUTS = 2048
"""Inputs in one embeddings request (OpenAI's own limit)."""
MAX_INPUT_TOKENS = 8192
"""Token ids in one input given as tokens (longer than any embedding model's window)."""

TokenList = Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_INPUT_TOKENS)]
EmbeddingInput = (
    str
    | Annotated[list[str], Field(max_length=MAX_EMBEDDING_INPUTS)]
    | TokenList
    | Annotated[list[TokenList], Field(max_length=MAX_EMBEDDING_INPUTS)]
)


class EmbeddingRequest(_Request):
    """`POST /v1/embeddings`. `truncate` (an extension) cuts an input longer than the model's
    window to fit, instead of refusing it. Any other field is refused (it would reach vLLM as
    is)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: EmbeddingInput

    @field_validator("input", mode="before")
    @classmethod
    def _bounded(cls, value: object) -> object:
        """Too many inputs: one clear message (not one per union branch)."""
        if not isinstance(value, list) or len(value) <= MAX_EMBEDDING_INPUTS:
            return value
        if not all(
            isinstance(item, int) for item in value[:MAX_INPUT_TOKENS]
        ):  # not one token list
            raise ValueError(
                f"{len(value)} inputs in one request; at most {MAX_EMBEDDING_INPUTS} are "
                "allowed: send them in several requests"
            )
        return value

    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    truncate: bool = False

    def inputs(self) -> list[str | list[int]]:
        """Each input, as text or token ids; an empty one is refused, naming its index."""
        value = self.input
        items: list[str | list[int]]
        if isinstance(value, str):
            items = [value]
        elif not value:
            raise InvalidRequest("`input` is an empty list; send at least one input", param="input")
        elif isinstance(value[0], int):
            items = [[int(t) for t in value if isinstance(t, int)]]
        else:
            items = [item if isinstance(item, str) else list(item) for item in value]
        for index, item in enumerate(items):
            if not item:
                where = self.where(index)
                raise InvalidRequest(
                    f"{where} is empty; every input needs text or tokens", param=where
                )
        return items

    def where(self, index: int) -> str:
        """How an error names input number `index` (`param`)."""
        return "input" if isinstance(self.input, str) else f"input[{index}]"

    def check_dimensions(self, matryoshka: bool) -> None:
        """Refuses `dimensions` for a model trained to give vectors of one size only."""
        if self.dimensions is not None and not matryoshka:
            raise UnsupportedParameter(
                f"model {self.model!r} gives vectors of one size only; leave `dimensions` out",
                param="dimensions",
            )

    def check_vocabulary(self, index: int, tokens: list[int], n_vocab: int) -> None:
        """Refuses token ids the model does not have, naming the input."""
        bad = [t for t in tokens if t >= n_vocab]
        if bad:
            where = self.where(index)
            raise InvalidRequest(
                f"{where} has token ids outside the vocabulary (0..{n_vocab - 1}): {bad[:5]}",
                param=where,
            )

    def too_long(self, index: int, tokens: int, window: int) -> ContextLengthExceeded:
        """The refusal of an input longer than the model's window (without `truncate`)."""
        where = self.where(index)
        return ContextLengthExceeded(
            f"{where} is {tokens} tokens, and model {self.model!r} embeds at most {window}; "
            "shorten it, or send `truncate: true` to cut it",
            param=where,
        )


CompletionBody = ChatCompletionRequest | CompletionRequest
"""A validated request for generated text (chat or legacy completions)."""


def request_for(path: str, payload: dict[str, Any]) -> CompletionBody:
    """`payload` validated as the request type of `path` (chat or legacy completions)."""
    if path.endswith("/chat/completions"):
        return ChatCompletionRequest.model_validate(payload)
    return CompletionRequest.model_validate(payload)
