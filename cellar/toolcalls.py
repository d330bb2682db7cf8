"""Tool calling, engine-neutral: the request's tools and calls, their checks, and how a
conversation with tools becomes plain turns in the Hermes format.

The Hermes format (the one most small models know) puts the function list in the system turn
and has the model answer with one block per call:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Hanoi"}}
    </tool_call>

A tool's result goes back as a user turn holding `<tool_response>...</tool_response>`. A model
whose own chat template renders `tools` gets them through its template instead
(`renders_tools`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field

from cellar.errors import InvalidRequest

MAX_TOOLS = 128
"""Functions in one request (OpenAI's own limit)."""
MAX_DESCRIPTION = 8192
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def parameters_schema(self) -> dict[str, Any]:
        """The arguments' JSON schema (an object with no properties when none is given)."""
        return self.parameters if self.parameters is not None else {"type": "object"}


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(max_length=64)
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolRequest(BaseModel):
    """The tool fields of a chat request, as a mixin."""

    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def tool_mode(self) -> str:
        """`none`, `auto`, `required` or `named`; `none` also when no tools are given."""
        if not self.tools:
            return "none"
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            return "named"
        return choice or "auto"

    def callable_tools(self) -> list[FunctionSpec]:
        """The functions the model may call now (only the named one for a named choice)."""
        functions = [tool.function for tool in self.tools or []]
        if isinstance(self.tool_choice, NamedToolChoice):
            return [f for f in functions if f.name == self.tool_choice.function.name]
        return functions if self.tool_mode() != "none" else []

    def one_call_only(self) -> bool:
        return self.tool_mode() == "named" or self.parallel_tool_calls is False

    def check_tools(self) -> None:
        """Refuses duplicate names, bad schemas and a choice naming no given function."""
        names: set[str] = set()
        for index, tool in enumerate(self.tools or []):
            function = tool.function
            if function.name in names:
                raise InvalidRequest(
                    f"two tools are named {function.name!r}; function names must be unique",
                    param=f"tools[{index}].function.name",
                )
            names.add(function.name)
            check_parameters(function.parameters_schema(), f"tools[{index}].function.parameters")
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise InvalidRequest("`tool_choice` needs `tools`", param="tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequest(
                f"`tool_choice` names {choice.function.name!r}, which is not among `tools`",
                param="tool_choice.function.name",
            )


MAX_SCHEMA_DEPTH = 32
"""Nesting of a parameters schema (as for `response_format`'s)."""


def _deeper_than(node: Any, limit: int) -> bool:
    """Whether `node` nests more than `limit` levels (without recursing)."""
    level: list[Any] = [node]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


def check_parameters(schema: dict[str, Any], param: str) -> None:
    """A function's parameters must be a valid JSON schema for an object."""
    if _deeper_than(schema, MAX_SCHEMA_DEPTH):
        raise InvalidRequest(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels", param=param)
    if not isinstance(schema.get("$schema", ""), str):
        raise InvalidRequest("`$schema` must be a string (a URI)", param=param)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"not a valid JSON schema: {exc.message}", param=param) from None
    kind = schema.get("type", "object")
    if kind != "object":
        raise InvalidRequest(
            f"a function's parameters are an object; this schema's type is {kind!r}",
            param=param,
        )


def check_conversation(messages: list[Any]) -> None:
    """`tool_calls` only on assistant turns; every `tool` turn answers an earlier call."""
    called: set[str] = set()
    for index, message in enumerate(messages):
        calls = getattr(message, "tool_calls", None) or []
        if calls and message.role != "assistant":
            raise InvalidRequest(
                "only assistant messages carry `tool_calls`", param=f"messages[{index}].tool_calls"
            )
        called.update(call.id for call in calls)
        if message.role == "tool":
            call_id = getattr(message, "tool_call_id", None)
            if not call_id:
                raise InvalidRequest(
                    "a `tool` message needs the `tool_call_id` of the call it answers",
                    param=f"messages[{index}].tool_call_id",
                )
            if call_id not in called:
                raise InvalidRequest(
                    f"`tool_call_id` {call_id!r} answers no tool call of an earlier "
                    "assistant message",
                    param=f"messages[{index}].tool_call_id",
                )


def renders_tools(template: str | None) -> bool:
    """Whether a chat template renders `tools` itself (a tool-aware template from a model)."""
    return template is not None and "tools" in template


def _arguments(text: str) -> Any:
    """A call's arguments as JSON when they parse (they are a string in the API)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def call_block(name: str, arguments: Any) -> str:
    """One call, written as the model writes it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def system_text(functions: list[FunctionSpec]) -> str:
    """The Hermes function list, for the system turn."""
    lines = "\n".join(
        json.dumps(f.model_dump(exclude_none=True), ensure_ascii=False) for f in functions
    )
    return (
        f"You can call these functions:\n<tools>\n{lines}\n</tools>\n"
        f"To call one, reply with\n{CALL_OPEN}\n"
        f'{{"name": <function name>, "arguments": <arguments object>}}\n{CALL_CLOSE}\n'
        "Otherwise, reply in text."
    )


def hermes_turns(messages: list[Any], functions: list[FunctionSpec]) -> list[dict[str, Any]]:
    """The conversation as plain system/user/assistant turns with text content: the function
    list joins the system turn, calls become blocks in the assistant's text, and the results
    of consecutive `tool` messages become one user turn."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        text = message.text()
        if message.role == "tool":
            block = f"{RESULT_OPEN}\n{text}\n{RESULT_CLOSE}"
            if turns and turns[-1].get("tool_results"):
                turns[-1]["content"] += "\n" + block
            else:
                turns.append({"role": "user", "content": block, "tool_results": True})
            continue
        calls = getattr(message, "tool_calls", None) or []
        if calls:
            blocks = [call_block(c.function.name, _arguments(c.function.arguments)) for c in calls]
            text = "\n".join([text] * bool(text) + blocks)
        turn = {"role": message.role, "content": text}
        if message.name:
            turn["name"] = message.name
        turns.append(turn)
    for turn in turns:
        turn.pop("tool_results", None)
    if functions:
        listing = system_text(functions)
        if turns and turns[0]["role"] in ("system", "developer"):
            turns[0]["content"] = f"{turns[0]['content']}\n\n{listing}"
        else:
            turns.insert(0, {"role": "system", "content": listing})
    return turns
