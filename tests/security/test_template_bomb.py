"""A chat template from a model file cannot stall or exhaust the worker.

Attacks: templates (the GGUF's own, or any other) that loop without end, loop writing nothing,
write gigabytes, or build one huge value. Before: rendering ran on the worker's event loop with
no bound, so one chat request froze every stream of that model.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from cellar.chat import RENDER_TIMEOUT_S, ChatTemplate
from cellar.errors import InvalidRequest
from cellar.store import ModelStore
from tests.gateway import MODEL, default_models, start_gateway

SILENT_LOOP = (
    "{% for m in messages %}{% set c = m.content %}"
    "{% for a in c %}{% for b in c %}{% endfor %}{% endfor %}{% endfor %}"
)
BOMBS = {
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}",
    "a silent loop over the input": SILENT_LOOP,
    "gigabytes of output": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "one huge string": "{{ 'x' * 1000000000 }}",
    "one huge number": "{{ 10 ** 100000000 }}",
    "a huge format width": "{{ '%1000000000d' % 1 }}",
    "a huge centre": "{{ 'x'|center(1000000000) }}",
}
LONG_MESSAGE: list[Any] = [{"role": "user", "content": "y" * 20000}]


@pytest.mark.parametrize("source", BOMBS.values(), ids=BOMBS.keys())
def test_a_template_bomb_stops_with_a_400(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as caught:
        ChatTemplate(source).render(LONG_MESSAGE)
    assert time.monotonic() - started < RENDER_TIMEOUT_S + 1
    assert caught.value.param == "messages"
    assert "bounds" in caught.value.message


@pytest.mark.slow
def test_the_worker_renders_off_its_loop_and_keeps_streaming(
    store: ModelStore, tmp_path: Path
) -> None:
    models = default_models()
    models[0]["chat_template"] = SILENT_LOOP
    with start_gateway(tmp_path, store.root, models) as gw:
        client = gw.client()
        arrivals: list[float] = []
        generated: list[int] = []

        def stream() -> None:
            for chunk in client.completions.create(
                model=MODEL,
                prompt="Once upon a time",
                max_tokens=240,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            ):
                arrivals.append(time.monotonic())
                if chunk.usage is not None:
                    generated.append(chunk.usage.completion_tokens)

        other = threading.Thread(target=stream)
        other.start()
        while len(arrivals) < 3:
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=LONG_MESSAGE, max_tokens=4)
        ended = time.monotonic()
        assert ended - started < RENDER_TIMEOUT_S + 3
        assert "took longer" in str(caught.value.body)
        other.join(timeout=300)
        during = [t for t in arrivals if started <= t <= ended]
        # Every token came (a piece that ends inside a UTF-8 character waits for the next one,
        # so there can be fewer chunks than tokens), and the stream went on meanwhile.
        assert generated == [240] and len(arrivals) >= 200 and len(during) >= 5
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert max(gaps) < RENDER_TIMEOUT_S  # never frozen for the whole rendering
