"""Structured output: every answer parses, and validates against the requested schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.gateway import MODEL, Gateway

pytestmark = pytest.mark.slow

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
        "required": ["colour", "bright"],
    },
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3}
        },
        "required": ["tags"],
    },
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 16},
            "location": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
            },
        },
        "required": ["city", "location"],
    },
    {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 20}, "score": {"type": "integer"}},
        "required": ["answer", "score"],
    },
]
QUESTIONS = [
    "Describe a person.",
    "Pick a colour.",
    "Tag this photo of a beach.",
    "Where is Hanoi?",
]


@pytest.mark.parametrize("case", range(20))
def test_json_schema_output_parses_and_validates(gateway: Gateway, case: int) -> None:
    schema = SCHEMAS[case % len(SCHEMAS)]
    reply = gateway.client().chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": QUESTIONS[case % len(QUESTIONS)] + " Answer in JSON."}
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        max_tokens=200,
        temperature=0.7,
        seed=case,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content or ""), schema)


def test_json_object_mode_gives_an_object(gateway: Gateway) -> None:
    reply = gateway.client().completions.create(
        model=MODEL,
        prompt='A cat as JSON: {"name": "Tom", "age": 3}\nA dog as JSON:',
        max_tokens=200,
        temperature=0,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert isinstance(json.loads(reply.choices[0].text), dict)


def test_streamed_structured_output_is_the_same_json(gateway: Gateway) -> None:
    schema = SCHEMAS[1]
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    messages: Any = [{"role": "user", "content": "Pick a colour."}]
    client = gateway.client()
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, response_format=fmt, max_tokens=100, temperature=0
    )
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        response_format=fmt,
        max_tokens=100,
        temperature=0,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    jsonschema.validate(json.loads(streamed), schema)


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_schema"},
        {"type": "xml"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "r",
                "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}},
            },
        },
    ],
)
def test_bad_response_format_is_a_400(gateway: Gateway, fmt: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": fmt}
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
