"""Many clients at once, and clients that leave: nothing is cut off, corrupted or leaked."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.gateway import MODEL, Gateway

pytestmark = pytest.mark.slow

PROMPTS = [
    "The river flows",
    "In the year 1900",
    "My favourite recipe is",
    "The engine started",
    "Dear diary, today",
    "The rules of chess",
    "On the island of",
    "A short poem about snow",
]


def _stream_text(gateway: Gateway, prompt: str) -> tuple[str, str | None]:
    client = gateway.client()
    parts, finish = [], None
    for chunk in client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=32, temperature=0, stream=True
    ):
        parts.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


def test_eight_concurrent_streams_all_complete_uncorrupted(gateway: Gateway) -> None:
    client = gateway.client()
    alone = {
        p: client.completions.create(model=MODEL, prompt=p, max_tokens=32, temperature=0)
        .choices[0]
        .text
        for p in PROMPTS
    }
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = dict(
            zip(PROMPTS, pool.map(lambda p: _stream_text(gateway, p), PROMPTS), strict=True)
        )
    for prompt, (text, finish) in results.items():
        assert finish in ("stop", "length")
        assert text == alone[prompt], prompt


def _worker_load(gateway: Gateway) -> tuple[int, int]:
    with gateway.http() as http:
        text = http.get("/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("cellar:num_requests_running", "cellar:num_requests_waiting"):
            if line.startswith(name + "{") and f'model_name="{MODEL}"' in line:
                values[name] = int(float(line.rsplit(" ", 1)[1]))
    return values["cellar:num_requests_running"], values["cellar:num_requests_waiting"]


def _served_promptly(gateway: Gateway) -> float:
    started = time.monotonic()
    reply = gateway.client().completions.create(model=MODEL, prompt="Hi", max_tokens=4)
    assert reply.choices[0].text is not None
    return time.monotonic() - started


def _wait_idle(gateway: Gateway, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while _worker_load(gateway) != (0, 0):
        assert time.monotonic() < deadline, "the worker kept generating for a gone client"
        time.sleep(0.1)


def test_disconnected_stream_frees_the_worker(gateway: Gateway) -> None:
    body = {
        "model": MODEL,
        "prompt": "Write a very long story.",
        "max_tokens": 3000,
        "temperature": 1.0,
        "stream": True,
    }
    with gateway.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert _worker_load(gateway)[0] == 1
    # 3000 tokens would take ~50 s; a freed worker is idle at once and answers the next request.
    _wait_idle(gateway)
    assert _served_promptly(gateway) < 10


def test_disconnected_unstreamed_request_frees_the_worker(gateway: Gateway) -> None:
    body = {"model": MODEL, "prompt": "Write a very long story.", "max_tokens": 3000}
    with gateway.http(timeout=1.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json=body)
    _wait_idle(gateway)
    assert _served_promptly(gateway) < 10
