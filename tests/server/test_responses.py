"""`/v1/responses` through the official SDK, on both engines: typed responses, chained by
`previous_response_id`, the documented stream events in order, function tools and their
outputs, `text.format`, and OpenAI-shaped errors."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from cellar.server.responses import ResponseStore
from tests.gateway import MODEL, Gateway

pytestmark = pytest.mark.slow

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
    },
}


def test_a_response_is_typed_chained_kept_and_deleted(gateway: Gateway) -> None:
    client = gateway.client()
    first = client.responses.create(
        model=MODEL, input="Write a haiku about cellars.", instructions="Be brief.",
        max_output_tokens=12, temperature=0,
    )  # fmt: skip
    assert first.id.startswith("resp_") and first.object == "response"
    assert first.output_text and first.output[0].type == "message"
    assert first.status == "incomplete" and first.incomplete_details is not None
    assert first.usage is not None and first.usage.output_tokens == 12
    second = client.responses.create(
        model=MODEL, input="Another one.", previous_response_id=first.id, max_output_tokens=4
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    # the earlier turn and its answer are in the prompt; its instructions are not
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 8
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="x", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found"
    unkept = client.responses.create(model=MODEL, input="x", store=False, max_output_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_text_streams_the_documented_events_in_order(gateway: Gateway) -> None:
    events = list(
        gateway.client().responses.create(
            model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # it ran into max_output_tokens
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last: Any = events[-1]
    final = last.response
    assert final.output_text == text and final.usage is not None


def test_function_tools_loop_and_stream(gateway: Gateway) -> None:
    client = gateway.client()
    asked = client.responses.create(
        model=MODEL, input="What is the weather in Hue?", tools=[WEATHER],
        tool_choice="required", parallel_tool_calls=False, max_output_tokens=60, temperature=0,
    )  # fmt: skip
    assert asked.status == "completed"
    (call,) = asked.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    answered = client.responses.create(
        model=MODEL,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "31 degrees"}],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=30,
        temperature=0,
    )
    assert answered.output_text and answered.usage is not None and asked.usage is not None
    alone = client.responses.create(
        model=MODEL, input="What is the weather in Hue?", tools=[WEATHER], tool_choice="none",
        max_output_tokens=1,
    )  # fmt: skip
    assert alone.usage is not None
    # the call and its output were in the prompt (the adapter test checks the answer uses it)
    assert answered.usage.input_tokens >= alone.usage.input_tokens + 20

    with client.responses.stream(
        model=MODEL, input="What is the weather in Hue?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60,
        temperature=0,
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    pieces = kinds.count("response.function_call_arguments.delta")
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * pieces,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == call.arguments  # the same answer, streamed


def test_text_format_json_schema(gateway: Gateway) -> None:
    schema: Any = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green"]}, "bright": {"type": "boolean"}},
        "required": ["colour", "bright"],
    }
    answer = gateway.client().responses.create(
        model=MODEL,
        input="Pick a colour.",
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema}},
        max_output_tokens=40,
    )
    jsonschema.validate(json.loads(answer.output_text), schema)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"truncation": "auto"}, "truncation"),
        ({"input": []}, "input"),
        ({"tools": [{"type": "function", "name": "f", "bogus": 1}]}, "tools[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_unsupported_fields_get_a_400_naming_them(
    gateway: Gateway, fields: dict[str, Any], param: str
) -> None:
    request = {"model": MODEL, "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().responses.create(**request)
    assert caught.value.param == param, caught.value.body


def test_unknown_models_and_fields_are_openai_errors(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        gateway.client().responses.create(model="no-such-model", input="hi")
    assert missing.value.code == "model_not_found"
    with gateway.http() as http:
        response = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "x": 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "x"


def test_a_stored_response_is_only_for_the_key_that_made_it() -> None:
    store = ResponseStore(ttl_s=60, max_entries=2)
    for number in range(3):
        store.put("key-a", {"id": f"resp_{number}"}, [])
    assert store.get("key-a", "resp_0") is None  # the oldest went first
    assert store.get("key-a", "resp_2") is not None
    assert store.get("key-b", "resp_2") is None and not store.delete("key-b", "resp_2")
    expired = ResponseStore(ttl_s=0)
    expired.put("key-a", {"id": "resp_x"}, [])
    assert expired.get("key-a", "resp_x") is None
    small = ResponseStore(max_bytes=10_000)  # big conversations cannot fill the memory
    for number in range(5):
        small.put("key-a", {"id": f"resp_{number}"}, [{"content": "x" * 4000}])
    assert [small.get("key-a", f"resp_{n}") is not None for n in range(5)] == [0, 0, 0, 1, 1]
