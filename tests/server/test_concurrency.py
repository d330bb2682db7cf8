"""Many clients at once, and clients that leave: nothing is cut off, corrupted or leaked."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.gateway import MODEL, Gateway

pytestmark = pytest.mark.slow

MARKERS = ["pelican", "tornado", "saffron", "glacier", "lantern", "mongoose", "quartz", "cactus"]
SAMPLING: list[dict[str, Any]] = [
    {"temperature": 0},
    {"temperature": 0.3, "seed": 1},
    {"temperature": 0.5, "seed": 2, "top_p": 0.9},
    {"temperature": 0.2, "seed": 3, "presence_penalty": 0.5},
    {"temperature": 0, "frequency_penalty": 0.3},
    {"temperature": 0.4, "seed": 4, "extra_body": {"top_k": 5}},
    {"temperature": 0.3, "seed": 5, "extra_body": {"min_p": 0.1}},
    {"temperature": 0.1, "seed": 6, "extra_body": {"repetition_penalty": 1.05}},
]


def _marker_prompt(word: str) -> str:
    return ", ".join([word] * 24) + ","


def _stream(gateway: Gateway, prompt: str, sampling: dict[str, Any]) -> tuple[str, str | None]:
    parts, finish = [], None
    for chunk in gateway.client().completions.create(
        model=MODEL, prompt=prompt, max_tokens=24, stream=True, **sampling
    ):
        parts.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


def test_eight_concurrent_streams_show_no_cross_talk(gateway: Gateway) -> None:
    with ThreadPoolExecutor(len(MARKERS)) as pool:
        results = list(
            pool.map(
                lambda i: _stream(gateway, _marker_prompt(MARKERS[i]), SAMPLING[i]),
                range(len(MARKERS)),
            )
        )
    for marker, (text, finish) in zip(MARKERS, results, strict=True):
        assert finish in ("stop", "length"), marker
        lowered = text.lower()
        assert marker in lowered, f"{marker!r} stream lost its own word: {text!r}"
        strangers = [m for m in MARKERS if m != marker and m in lowered]
        assert not strangers, f"{marker!r} stream carries {strangers}: {text!r}"


def test_same_request_alone_is_reproducible_run_after_run(gateway: Gateway) -> None:
    client = gateway.client()
    for sampling in ({"temperature": 0}, {"temperature": 0.9, "seed": 77}):
        runs = {
            client.completions.create(
                model=MODEL, prompt="The old lighthouse keeper", max_tokens=32, **sampling
            )
            .choices[0]
            .text
            for _ in range(3)
        }
        assert len(runs) == 1, runs


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
        "ignore_eos": True,
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
    body = {
        "model": MODEL,
        "prompt": "Write a very long story.",
        "max_tokens": 3000,
        "ignore_eos": True,
    }
    with gateway.http(timeout=1.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json=body)
    _wait_idle(gateway)
    assert _served_promptly(gateway) < 10
