"""Prompt sources: the shipped set, user files (errors name the line), random prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellar.benchmarks.suite.client import api_root, server_root
from cellar.benchmarks.suite.workload import (
    Calibration,
    Workload,
    WorkloadError,
    read_prompts,
    shipped_prompts_path,
)


def test_shipped_prompts_parse() -> None:
    prompts = read_prompts(shipped_prompts_path(), "completions", None)
    assert len(prompts) == 32
    assert any("Việt" in (p.prompt or "") or "Hãy" in (p.prompt or "") for p in prompts)
    assert all(p.prompt and p.output_len > 0 for p in prompts)
    assert {p.output_len for p in read_prompts(shipped_prompts_path(), "chat", 7)} == {7}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "a", "messages": [{"role": "user"}]}', "exactly one"),
        ('{"prompt": "  "}', "non-empty"),
        ('{"messages": [{"content": "hi"}]}', "`role`"),
        ('{"prompt": "a", "max_tokens": 0}', "positive integer"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "fine"}\n\n' + line + "\n")
    with pytest.raises(WorkloadError, match=f"mine.jsonl:3: .*{why}"):
        read_prompts(path, "chat", None)


def test_messages_need_the_chat_api(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(WorkloadError, match="--api chat"):
        read_prompts(path, "completions", None)
    (prompt,) = read_prompts(path, "chat", None)
    assert prompt.body("chat") == {"messages": [{"role": "user", "content": "hi"}]}


def test_random_prompts_follow_the_calibration_and_the_seed() -> None:
    calibration = Calibration(per_word=1.5, intercept=2.0)
    first = Workload(None, seed=3, input_len=62, output_len=16, calibration=calibration)
    again = Workload(None, seed=3, input_len=62, output_len=16, calibration=calibration)
    prompt = first.next()
    assert prompt == again.next()
    assert prompt.prompt is not None and len(prompt.prompt.split()) == 40  # (62 - 2) / 1.5
    assert prompt.output_len == 16
    varied = Workload(None, seed=1, input_len=100, output_len=100, range_ratio=0.5)
    lengths = {varied.next().output_len for _ in range(200)}
    assert min(lengths) >= 50 and max(lengths) <= 150 and len(lengths) > 20
    with pytest.raises(WorkloadError):
        Workload(None, seed=0, range_ratio=1.0)


def test_urls() -> None:
    assert api_root("http://h:8000") == "http://h:8000/v1"
    assert api_root("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_root("http://h/proxy/openai") == "http://h/proxy/openai"
    assert server_root("http://h:8000") == "http://h:8000"


def test_embedding_requests_take_several_prompts_texts() -> None:
    prompts = read_prompts(shipped_prompts_path(), "chat", None)
    workload = Workload(prompts, seed=3, batch=4)
    first = workload.next()
    assert len(first.texts) == 4 and all(first.texts)
    assert first.body("embeddings") == {"input": list(first.texts)}
    random_texts = Workload(None, seed=1, input_len=20, batch=2).next()
    assert len(random_texts.texts) == 2 and first.body("embeddings")["input"]
