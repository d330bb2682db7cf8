"""Tool calling through the official SDK, on both engines: forced calls always parse and
validate against their function's schema, streamed deltas add up to the whole answer's call,
a full agent loop works, and malformed tools get 400s naming the field."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.gateway import MODEL, Gateway

pytestmark = pytest.mark.slow

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
BOOKING: dict[str, Any] = {
    "name": "book_table",
    "description": "Book a table at the restaurant.",
    "parameters": {
        "type": "object",
        "properties": {
            "guests": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 16},
                        "vegetarian": {"type": "boolean"},
                    },
                    "required": ["name", "vegetarian"],
                },
            },
            "when": {
                "type": "object",
                "properties": {
                    "day": {"enum": ["monday", "tuesday", "friday"]},
                    "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                },
                "required": ["day", "time"],
            },
        },
        "required": ["guests", "when"],
    },
}
CONVERT: dict[str, Any] = {
    "name": "convert_currency",
    "description": "Convert an amount of money.",
    "parameters": {
        "type": "object",
        "properties": {
            "amount": {"type": "number"},
            "source": {"enum": ["USD", "EUR", "VND"]},
            "target": {"enum": ["USD", "EUR", "VND"]},
        },
        "required": ["amount", "source", "target"],
    },
}
FUNCTIONS = [WEATHER, BOOKING, CONVERT]
TOOLS: list[Any] = [{"type": "function", "function": f} for f in FUNCTIONS]
SCHEMAS: dict[str, Any] = {f["name"]: f["parameters"] for f in FUNCTIONS}
PROMPTS = [
    "What is the weather like in Hanoi today?",
    "Book a table for Anna and Minh on Friday at 19:30.",
    "How many euros is 250 US dollars?",
    "Thời tiết ở Đà Nẵng thế nào?",
    "I need a table for three people on Monday evening.",
]


def _ask(gateway: Gateway, case: int, stream: bool) -> tuple[str, list[tuple[str, str]]]:
    """Request `case`: a named choice (cycling over the functions) or `required`; the finish
    reason and the calls (name, arguments)."""
    named = case % 4 < 3
    choice: Any = (
        {"type": "function", "function": {"name": FUNCTIONS[case % 4]["name"]}}
        if named
        else "required"
    )
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPTS[case % len(PROMPTS)]}],
        "tools": TOOLS,
        "tool_choice": choice,
        "parallel_tool_calls": False,
        "max_tokens": 300,
        "temperature": 0.7,
        "seed": case,
    }
    client = gateway.client()
    if not stream:
        reply = client.chat.completions.create(**request)
        message = reply.choices[0].message
        assert message.content is None
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
        assert all(c.id.startswith("call_") for c in message.tool_calls or [])
        return reply.choices[0].finish_reason, calls
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = ""
    for chunk in client.chat.completions.create(**request, stream=True):
        delta = chunk.choices[0].delta
        assert not delta.content, "text leaked out of a forced call"
        for call in delta.tool_calls or []:
            if call.function is not None and call.function.name:
                assert call.index not in names, "a call's name came twice"
                assert call.id and call.type == "function"
                names[call.index] = call.function.name
            arguments[call.index] = arguments.get(call.index, "") + (
                (call.function.arguments or "") if call.function else ""
            )
        finish = chunk.choices[0].finish_reason or finish
    return finish, [(names[i], arguments[i]) for i in sorted(names)]


def test_forced_calls_validate_streamed_and_not(gateway: Gateway) -> None:
    """8 requests over 3 functions (nested objects, enums, arrays, a pattern), each named and
    `required` twice: every call's arguments parse and validate, and the streamed deltas add up
    to exactly the call of the same request (same seed) unstreamed. (The issue's 20 per engine
    were measured once for its closing note; 8 keep every kind in the suite at 40% of the
    time.)"""
    for case in range(8):  # one at a time: a batch of other requests could change a draw
        answer, pieces = _ask(gateway, case, False), _ask(gateway, case, True)
        finish, calls = answer
        # OpenAI's reasons: `stop` after a call of a named function, `tool_calls` otherwise
        assert finish == ("stop" if case % 4 < 3 else "tool_calls"), (case, answer)
        assert len(calls) == 1, (case, calls)
        name, arguments = calls[0]
        if case % 4 < 3:
            assert name == FUNCTIONS[case % 4]["name"]
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])
        streamed_finish, streamed_calls = pieces
        assert streamed_finish == finish and len(streamed_calls) == 1, (case, pieces)
        assert streamed_calls[0][0] == name
        assert json.loads(streamed_calls[0][1]) == json.loads(arguments), (case, pieces, answer)
        assert pieces == answer, (case, pieces, answer)


def test_agent_loop_through_the_sdk(gateway: Gateway) -> None:
    """Request -> call -> the test runs the tool -> a `tool` message -> a text answer that uses
    the tool's result (the base model is steered by the choices; the loop is what is tested)."""
    client = gateway.client()
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Hanoi?"}]
    first = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[TOOLS[0]],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
        temperature=0,
    )
    calls: Any = first.choices[0].message.tool_calls
    call = calls[0]
    city = json.loads(call.function.arguments)["city"]
    messages.append(first.choices[0].message)
    messages.append(
        {"role": "tool", "tool_call_id": call.id, "content": f"{city}: 31 degrees celsius, sunny"}
    )
    final = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[TOOLS[0]],
        tool_choice="none",
        max_tokens=30,
        temperature=0,
    )
    answer = final.choices[0]
    assert answer.message.tool_calls is None
    # The base model only echoes what it read; the number can come from nowhere else.
    assert "31" in (answer.message.content or ""), answer.message.content


def _bad(gateway: Gateway, **fields: Any) -> openai.BadRequestError:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
    }
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(**{**request, **fields})
    return caught.value


def test_malformed_tools_get_400s_naming_the_field(gateway: Gateway) -> None:
    bad_schema = [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]
    assert _bad(gateway, tools=bad_schema).param == "tools[0].function.parameters"
    not_object = [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]
    assert _bad(gateway, tools=not_object).param == "tools[0].function.parameters"
    twice = [TOOLS[0], TOOLS[1], TOOLS[0]]
    error = _bad(gateway, tools=twice)
    assert error.param == "tools[2].function.name" and "get_weather" in error.message
    unknown = {"type": "function", "function": {"name": "nope"}}
    assert _bad(gateway, tools=TOOLS, tool_choice=unknown).param == "tool_choice.function.name"
    assert _bad(gateway, tool_choice="required").param == "tool_choice"
    stray = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_nobody", "content": "42"},
    ]
    error = _bad(gateway, tools=TOOLS, messages=stray)
    assert error.param == "messages[1].tool_call_id" and "call_nobody" in error.message
    error = _bad(gateway, tools=TOOLS, response_format={"type": "json_object"})
    assert error.param == "response_format"
    bomb = {"type": "object", "properties": {"a": {"type": "array", "minItems": 100000}}}
    huge = [{"type": "function", "function": {"name": "f", "parameters": bomb}}]
    assert _bad(gateway, tools=huge).param == "tools[0].function.parameters"
