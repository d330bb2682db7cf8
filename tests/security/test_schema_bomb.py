"""A 70-byte JSON schema asking for a billion repeats is refused with a 400 in well under a
second, by the gateway (before it queues) and by the llama.cpp worker itself, while other
clients' streams go on. The converter would write every repeat out (10^9 items: ~18 GB)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest

from cellar.engines.grammar import MAX_REPEAT, check_schema
from cellar.errors import InvalidRequest
from tests.gateway import MODEL, Gateway
from tests.worker import BareWorker

BOMB = {"type": "array", "items": {"type": "string"}, "minItems": 1_000_000_000}


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "bomb", "schema": schema}}


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "array", "items": node}
    return node


MANY_LONG = {f"p{i}": {"type": "string", "maxLength": MAX_REPEAT} for i in range(20)}


@pytest.mark.parametrize(
    "schema",
    [
        BOMB,
        {"type": "string", "maxLength": 10**9},
        {"type": "string", "pattern": "^a{100000}$"},
        {"type": "object", "properties": {"a": {"type": "array", "maxItems": float("inf")}}},
        {"type": "object", "properties": MANY_LONG},
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}},
        _nested(40),
    ],
    ids=["items", "length", "pattern", "infinite", "total", "size", "depth"],
)
def test_bounds_are_checked_before_building(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema)
    assert caught.value.param == "response_format"


@pytest.mark.slow
def test_a_schema_bomb_is_a_quick_400_while_others_stream(gateway: Gateway) -> None:
    client = gateway.client()
    streamed: list[str] = []

    def stream() -> None:
        chunks = client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=48,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        streamed.extend(c.choices[0].text for c in chunks if c.choices)

    other = threading.Thread(target=stream)
    other.start()
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "List things."}],
            max_tokens=8,
            extra_body={"response_format": _format(BOMB)},
        )
    assert time.monotonic() - started < 1.0
    assert caught.value.param == "response_format"
    other.join(timeout=300)
    assert len(streamed) >= 40  # the other client's stream went on to its end


@pytest.mark.slow
def test_the_llamacpp_worker_refuses_it_too(worker: BareWorker) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 4, "response_format": _format(BOMB)}
    started = time.monotonic()
    refused = httpx.post(
        f"{worker.url}/v1/completions", json=body, headers=worker.headers, timeout=30
    )
    assert refused.status_code == 400 and time.monotonic() - started < 1.0
    assert refused.json()["error"]["param"] == "response_format"
