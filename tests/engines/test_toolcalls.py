"""Tool calls without a model: the Hermes turns, the request checks, the calls' grammar, the
streaming parser, and the guard that keeps a lazy grammar from firing on text it cannot take."""

from __future__ import annotations

import json
from typing import Any

import llama_cpp
import pytest

from cellar.engines.llamacpp.sampling import _Trigger
from cellar.engines.toolcalls import CallParser, CallRewriter, parse_calls, tool_grammar
from cellar.errors import InvalidRequest
from cellar.protocol import ChatCompletionRequest, ChatMessage
from cellar.toolcalls import hermes_turns

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
DEEP: dict[str, Any] = {"type": "object"}
for _ in range(2000):  # jsonschema would recurse past Python's limit on this
    DEEP = {"type": "object", "properties": {"a": DEEP}}
ODD: dict[str, Any] = {"$schema": [1], "type": "object"}
ANSWER = (
    "Let me look.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Ha \\"noi}", "days": [1, {"a": 2}]}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "noop", "arguments": {}}\n</tool_call>'
)


def _request(**fields: Any) -> ChatCompletionRequest:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
    return ChatCompletionRequest.model_validate({**base, **fields})


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64])
def test_streamed_pieces_add_up_to_the_whole_parse(size: int) -> None:
    content, calls = parse_calls(ANSWER)
    assert content == "Let me look.\n"
    assert [c.name for c in calls] == ["get_weather", "noop"]
    assert json.loads(calls[0].arguments) == {"city": 'Ha "noi}', "days": [1, {"a": 2}]}
    parser = CallParser()
    events = []
    for start in range(0, len(ANSWER), size):
        events += parser.feed(ANSWER[start : start + size])
    events += parser.close()
    assert "".join(e.text for e in events if e.kind == "text") == content
    for index, call in enumerate(calls):
        assert "".join(e.text for e in events if e.kind == "arguments" and e.index == index) == (
            call.arguments
        )
    assert all("<tool" not in e.text for e in events if e.kind == "text")


def test_text_that_only_looks_like_a_call_stays_text() -> None:
    assert parse_calls("a <tool here, and <b>") == ("a <tool here, and <b>", [])
    content, calls = parse_calls("<tool_call>" + "x" * 600)
    assert calls == [] and content.startswith("<tool_call>x")


def test_hermes_turns_list_the_functions_and_write_calls_and_results() -> None:
    request = _request(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Hue?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Hue"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        ]
    )
    request.check_supported()
    turns = hermes_turns(request.messages, request.callable_tools())
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert (
        turns[0]["content"].startswith("Be brief.\n\n") and '"get_weather"' in turns[0]["content"]
    )
    assert turns[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Hue"}}\n</tool_call>'
    )
    assert turns[3]["content"] == "<tool_response>\nrain\n</tool_response>"
    assert all(ChatMessage.model_validate(t) for t in turns)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
        ),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        (
            {"messages": [{"role": "tool", "tool_call_id": "call_9", "content": "1"}]},
            "messages[0].tool_call_id",
        ),
        (
            {"messages": [{"role": "tool", "content": "1"}]},
            "messages[0].tool_call_id",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": DEEP}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": ODD}}]},
            "tools[0].function.parameters",
        ),
    ],
)
def test_malformed_tools_are_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _request(**fields).check_supported()
    assert caught.value.param == param


def test_the_grammar_names_only_the_chosen_function_and_llama_cpp_takes_it(
    vocab: llama_cpp.Llama,
) -> None:
    other = {"type": "function", "function": {"name": "noop"}}
    named = _request(
        tools=[WEATHER, other], tool_choice={"type": "function", "function": {"name": "noop"}}
    )
    grammar = tool_grammar(named)
    assert grammar is not None and grammar.trigger is None
    assert '"\\"noop\\""' in grammar.text and "get_weather" not in grammar.text
    auto = tool_grammar(_request())
    assert auto is not None and auto.trigger == "<tool_call>"
    assert tool_grammar(_request(tool_choice="none")) is None
    for built in (grammar, auto):
        sampler = llama_cpp.llama_sampler_init_grammar(
            vocab._model.vocab, built.text.encode(), b"root"
        )
        assert sampler, built.text
        llama_cpp.llama_sampler_free(sampler)


def test_a_lazy_grammar_never_sees_a_trigger_it_cannot_take() -> None:
    """llama.cpp aborts (through ctypes: the worker dies) when a token completing the trigger
    carries text the grammar refuses; such a token is kept from the grammar."""
    pieces = {1: b"<tool", 2: b"_call", 3: b">.", 4: b">\n", 5: b'>\n{"name"', 6: b"> hi"}
    for tokens, fired in [((1, 2, 3), False), ((1, 2, 4), True), ((1, 2, 5), True)]:
        trigger = _Trigger("<tool_call>", lambda t: pieces[t])
        admitted = [trigger.admits(t) for t in tokens]
        assert trigger.fired is fired
        assert admitted[-1] is fired
    trigger = _Trigger("<tool_call>", lambda t: pieces[t])
    assert [trigger.admits(t) for t in (1, 2, 6, 4)] == [True, True, False, True]
    assert trigger.fired


def test_an_engines_text_answer_is_rewritten_into_calls() -> None:
    """What the gateway does for vLLM: the whole answer, and its stream chunk by chunk, with
    the worker's parser; text and usage pass on."""
    envelope: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk"}
    whole = CallRewriter(named=False).answer(
        {"choices": [{"index": 0, "message": {"content": ANSWER}, "finish_reason": "stop"}]}
    )
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look.\n"
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "noop"]
    rewriter = CallRewriter(named=True)
    pieces = [ANSWER[i : i + 4] for i in range(0, len(ANSWER), 4)]
    chunks: list[dict[str, Any]] = [
        {**envelope, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    ]
    chunks += [{**envelope, "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**envelope, "choices": [], "usage": {"total_tokens": 9}})
    out = [o for chunk in chunks for o in rewriter.chunk(chunk)]
    deltas = [o["choices"][0]["delta"] for o in out if o["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    arguments: dict[int, str] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", []):
            arguments[call["index"]] = (
                arguments.get(call["index"], "") + call["function"]["arguments"]
            )
    assert text == "Let me look.\n"
    assert [arguments[0], arguments[1]] == [c["function"]["arguments"] for c in calls]
    assert out[-2]["choices"][0]["finish_reason"] == "stop"  # a named function: `stop`
    assert out[-1] == chunks[-1] and all(o["id"] == "chatcmpl-1" for o in out)


def test_vllm_gets_the_turns_and_the_grammar_not_the_tools() -> None:
    """For vLLM the gateway writes the Hermes turns (or leaves tools to a template that renders
    them, with `tool_choice: none` so vLLM does not parse) and sends Cellar's grammar."""
    from cellar.engines.vllm.dialect import VllmDialect

    request = _request(tool_choice="required")
    payload = VllmDialect().prepare("/v1/chat/completions", request)
    assert "tools" not in payload and "tool_choice" not in payload
    assert (
        payload["messages"][0]["role"] == "system"
        and "<tools>" in payload["messages"][0]["content"]
    )
    assert "tool-call-json" in payload["structured_outputs"]["grammar"]
    lazy = VllmDialect().prepare("/v1/chat/completions", _request())
    tag = json.loads(lazy["structured_outputs"]["structural_tag"])
    assert tag["format"]["triggers"] == ["<tool_call>"]
    native = VllmDialect(hermes_prompts=False).prepare("/v1/chat/completions", _request())
    assert native["tools"][0]["function"]["name"] == "get_weather"
    assert native["tool_choice"] == "none" and native["messages"][0]["role"] == "user"


@pytest.mark.parametrize("field", ["tools", "tool_choice", "parallel_tool_calls"])
def test_legacy_completions_refuse_tool_fields(field: str) -> None:
    """Not ignored on one engine and refused on another: a 400 naming the field on both."""
    from cellar.protocol import CompletionRequest

    value = {"tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False}[field]
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x", field: value})
    with pytest.raises(InvalidRequest) as caught:
        request.check_supported()
    assert caught.value.param == field
