"""The Responses API's request (`POST /v1/responses`), and how it becomes a chat request.

A response is served by the chat path (server/responses.py): its `input` items, `instructions`
and the conversation of a `previous_response_id` become chat messages, its function tools chat
tools, `text.format` a `response_format`. What the chat path cannot do (built-in tools such as
web search, background mode, stored prompts, conversations, reasoning) is refused with a 400
naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cellar.errors import InvalidRequest, UnsupportedParameter
from cellar.protocol import ChatCompletionRequest, TextPart
from cellar.toolcalls import MAX_DESCRIPTION, MAX_TOOLS

MAX_INPUT_ITEMS = 2048
MAX_METADATA = 16


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_INPUT_ITEMS)]

    def text(self, where: str) -> str:
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for index, part in enumerate(self.content):
            if part.type not in ("input_text", "output_text", "text") or part.text is None:
                raise UnsupportedParameter(
                    f"content parts of type {part.type!r} are not supported; send text",
                    param=f"{where}.content[{index}].type",
                )
            pieces.append(part.text)
        return "".join(pieces)


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(max_length=64)
    arguments: str


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str


InputItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")
]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: TextFormat | None = None


_REFUSED = {
    "background": "background mode is not supported; send the request and wait for it",
    "conversation": "conversations are not supported; chain responses with `previous_response_id`",
    "prompt": "stored prompt templates are not supported; send `input` and `instructions`",
    "reasoning": "reasoning settings are not supported by the models Cellar serves",
    "top_logprobs": "`top_logprobs` is not supported on /v1/responses; use chat completions",
}


def _invalid(exc: ValidationError, param: str) -> InvalidRequest:
    """A 400 for what failed validation after the request was read, naming `param`."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return InvalidRequest(f"{where}: {error['msg']}" if where else error["msg"], param=param)


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], Field(max_length=MAX_INPUT_ITEMS)]
    instructions: str | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(None, max_length=128)
    metadata: Annotated[dict[str, str], Field(max_length=MAX_METADATA)] | None = None
    user: str | None = None
    truncation: Literal["disabled", "auto"] | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    # Refused with a clear 400 (see _REFUSED):
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    reasoning: Any = None
    top_logprobs: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _message_items(cls, data: Any) -> Any:
        """An input item with a `role` and no `type` is a message (as OpenAI reads it)."""
        if isinstance(data, dict) and isinstance(data.get("input"), list):
            data = dict(data)
            data["input"] = [
                {**item, "type": "message"}
                if isinstance(item, dict) and "type" not in item and "role" in item
                else item
                for item in data["input"]
            ]
        return data

    def check_supported(self) -> None:
        for name, why in _REFUSED.items():
            if getattr(self, name) not in (None, False):
                raise UnsupportedParameter(why, param=name)
        if self.truncation == "auto":
            raise UnsupportedParameter(
                "`truncation: auto` is not supported: an input too long for the model is refused",
                param="truncation",
            )

    def function_tools(self) -> list[FunctionTool]:
        """The function tools; a built-in tool (web search, file search...) is refused."""
        tools = []
        for index, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if kind != "function":
                raise UnsupportedParameter(
                    f"tools of type {kind!r} are not supported; only function tools are",
                    param=f"tools[{index}].type",
                )
            try:
                tools.append(FunctionTool.model_validate(tool))
            except ValidationError as exc:
                raise _invalid(exc, f"tools[{index}]") from None
        return tools

    def input_messages(self) -> list[dict[str, Any]]:
        """`input` as chat messages: consecutive function calls become one assistant turn
        with `tool_calls`, their outputs `tool` messages."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict[str, Any]] = []
        for index, item in enumerate(self.input):
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": item.text(f"input[{index}]")})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                last = messages[-1] if messages else None
                if last is not None and last.get("tool_calls") and not last.get("content"):
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
                )
        return messages

    def chat(self, history: list[dict[str, Any]]) -> ChatCompletionRequest:
        """The chat request that serves this response, after the conversation `history`."""
        self.check_supported()
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        messages += history + self.input_messages()
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        tools = self.function_tools()
        if tools:
            body["tools"] = [
                {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                for t in tools
            ]
        if isinstance(self.tool_choice, NamedFunction):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        fields = {
            "parallel_tool_calls": self.parallel_tool_calls,
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "user": self.user,
        }
        body.update({key: value for key, value in fields.items() if value is not None})
        text_format = self.text.format if self.text is not None else None
        if text_format is not None and text_format.type == "json_schema":
            spec = {"name": text_format.name or "response", "schema": text_format.schema_ or {}}
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif text_format is not None and text_format.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        try:
            request = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:  # e.g. nothing to answer: no input, no instructions
            raise _invalid(exc, "input") from None
        request.check_supported()
        return request
