"""The batching scheduler seen from outside: slots, queueing, cancellation, prefix reuse,
context limits, logprobs and multi-byte text."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cellar.store import ModelStore
from tests.gateway import MODEL, Gateway, default_models, start_gateway

pytestmark = pytest.mark.slow

SMALL_CTX = 1024


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory: pytest.TempPathFactory, store: ModelStore) -> Iterator[Gateway]:
    """A gateway whose model decodes at most two requests at once, in 1024-token contexts."""
    [model] = default_models()
    model["llamacpp"] = {"n_ctx": SMALL_CTX, "n_parallel": 2}
    with start_gateway(tmp_path_factory.mktemp("two-slots"), store.root, [model]) as gw:
        yield gw


@pytest.fixture(scope="module")
def gateway(llama_gateway: Gateway) -> Gateway:
    """Slots and prefix reuse are the llama.cpp worker's own scheduler: llama.cpp only here."""
    return llama_gateway


def _load(gateway: Gateway) -> dict[str, float]:
    with gateway.http() as http:
        text = http.get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("cellar:") and f'model_name="{MODEL}"' in line:
            name = line.split("{", 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def _wait_for(gateway: Gateway, running: int, waiting: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        load = _load(gateway)
        now = (load["cellar:num_requests_running"], load["cellar:num_requests_waiting"])
        if now == (running, waiting):
            return
        assert time.monotonic() < deadline, f"running/waiting stuck at {now}"
        time.sleep(0.1)


def test_cancelled_stream_frees_its_slot_for_a_queued_request(two_slots: Gateway) -> None:
    long_body = {
        "model": MODEL,
        "prompt": "A long tale:",
        "max_tokens": SMALL_CTX - 16,
        "stream": True,
        "ignore_eos": True,
    }
    with (
        two_slots.http() as first,
        two_slots.http() as second,
        first.stream("POST", "/v1/completions", json=long_body) as a,
        second.stream("POST", "/v1/completions", json=long_body) as b,
    ):
        # Keep the line iterators: dropping one closes its connection (a disconnect).
        a_lines, b_lines = a.iter_lines(), b.iter_lines()
        next(a_lines)
        next(b_lines)
        _wait_for(two_slots, running=2, waiting=0)
        done: dict[str, Any] = {}

        def queued() -> None:
            reply = two_slots.client().completions.create(model=MODEL, prompt="Hi", max_tokens=3)
            done["at"] = time.monotonic()
            done["text"] = reply.choices[0].text

        thread = threading.Thread(target=queued)
        thread.start()
        _wait_for(two_slots, running=2, waiting=1)
        cancelled_at = time.monotonic()
        a.close()  # the client of stream `a` goes away
        thread.join(timeout=30)
        assert "at" in done, "the queued request never ran"
        # ~500 tokens of the other stream would take many seconds: the freed slot was used.
        assert done["at"] - cancelled_at < 5
        _wait_for(two_slots, running=1, waiting=0)  # stream `b` is still being served
        assert any(line.startswith("data: {") for line in itertools.islice(b_lines, 4))


def test_sequence_reaching_the_context_limit_finishes_with_length(two_slots: Gateway) -> None:
    words = "word " * (SMALL_CTX - 30)
    reply = two_slots.client().chat.completions.create(  # no max_tokens: the rest of the context
        model=MODEL,
        messages=[{"role": "user", "content": words}],
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == SMALL_CTX


SYSTEM = " ".join(f"Rule {i}: answer politely and briefly, citing rule {i}." for i in range(30))


def test_shared_prefix_is_computed_once(gateway: Gateway) -> None:
    client = gateway.client()
    before = _load(gateway).get("cellar:prompt_tokens_cached_total", 0.0)
    first = client.chat.completions.create(
        model=MODEL,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello"}],
    )
    second = client.chat.completions.create(
        model=MODEL,
        max_tokens=4,
        temperature=0,
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is rule 7?"},
        ],
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached > 0.9 * first.usage.prompt_tokens - 10, (cached, first.usage.prompt_tokens)
    assert cached < second.usage.prompt_tokens
    after = _load(gateway)["cellar:prompt_tokens_cached_total"]
    assert after - before >= cached


def test_growing_chat_reuses_the_whole_previous_prompt(gateway: Gateway) -> None:
    client = gateway.client()
    turn = [{"role": "user", "content": "Tell me about the sea."}]
    first = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=12)  # type: ignore[arg-type]
    grown = [
        *turn,
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And the mountains?"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=grown, max_tokens=4)  # type: ignore[arg-type]
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    assert (second.usage.prompt_tokens_details.cached_tokens or 0) >= first.usage.prompt_tokens


MULTILINGUAL = [
    "Phở là món ăn truyền thống của Việt Nam. Hôm nay tôi muốn",
    "北京是中国的首都。今天的天气",
    "Emoji story: 🍜🎉🚀 then 🌧️ and",
]


@pytest.mark.parametrize("prompt", MULTILINGUAL)
def test_non_latin_text_streams_byte_exact(gateway: Gateway, prompt: str) -> None:
    client = gateway.client()
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stream=True
        )
    )
    text = whole.choices[0].text
    assert streamed.encode() == text.encode()
    assert any(ord(ch) > 127 for ch in text), f"expected non-ASCII output, got {text!r}"


def test_chat_logprobs(gateway: Gateway) -> None:
    reply = gateway.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert reply.usage is not None
    if choice.finish_reason == "length":
        assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy takes the likeliest
        assert bytes(entry.bytes or []) == entry.token.encode()


def test_completion_logprobs_streamed_and_not(gateway: Gateway) -> None:
    client = gateway.client()
    whole = client.completions.create(
        model=MODEL, prompt="The alphabet: a, b,", max_tokens=6, temperature=0, logprobs=2
    )
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert "".join(logprobs.tokens) == whole.choices[0].text
    assert logprobs.text_offset == sorted(logprobs.text_offset or [])
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    streamed_tokens: list[str] = []
    for chunk in client.completions.create(
        model=MODEL,
        prompt="The alphabet: a, b,",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        stream=True,
    ):
        chunk_logprobs = chunk.choices[0].logprobs
        if chunk_logprobs and chunk_logprobs.tokens:
            streamed_tokens.extend(chunk_logprobs.tokens)
    assert streamed_tokens == logprobs.tokens


def test_top_logprobs_without_logprobs_is_a_400(gateway: Gateway) -> None:
    with gateway.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "top_logprobs": 2,
            },
        )
    assert response.status_code == 400
