"""A 500-request chat batch through the official SDK on the real model, with the gateway killed
(SIGKILL) halfway: the next gateway finishes it, every request answered exactly once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from cellar.store import ModelStore
from tests.gateway import MODEL, default_models, start_gateway

pytestmark = pytest.mark.slow

N = 500
BAD = 123
"""The line whose body the gateway refuses (its messages are not a list)."""


def requests() -> bytes:
    items: list[dict[str, Any]] = []
    for i in range(N):
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Say the number {i}."}],
            "max_tokens": 3,
        }
        if i == BAD:
            body["messages"] = "not a list"
        items.append(
            {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return "".join(json.dumps(item) + "\n" for item in items).encode()


def wait_for(client: openai.OpenAI, batch_id: str, done: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)


def test_a_500_request_batch_survives_a_killed_gateway_with_each_answer_once(
    tmp_path: Path, store: ModelStore
) -> None:
    sections = {"batches": {"dir": str(tmp_path / "batches")}}
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
    with start_gateway(tmp_path / "first", store.root, default_models(), sections=sections) as gw:
        client = gw.client()
        file = client.files.create(file=("requests.jsonl", requests()), purpose="batch")
        assert file.purpose == "batch" and file.bytes > 0
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress"
        assert batch.request_counts is not None and batch.request_counts.total == N
        halfway = wait_for(
            client, batch.id, lambda b: b.request_counts.completed >= N // 2, timeout_s=900
        )
        os.kill(gw.process.pid, signal.SIGKILL)
        gw.process.wait(timeout=30)
    assert halfway.status == "in_progress"
    with start_gateway(tmp_path / "second", store.root, default_models(), sections=sections) as gw:
        client = gw.client()
        done = wait_for(client, batch.id, lambda b: b.status == "completed", timeout_s=900)
        assert done.request_counts.total == N
        assert (done.request_counts.completed, done.request_counts.failed) == (N - 1, 1)
        assert done.output_file_id and done.error_file_id
        output = [
            json.loads(line) for line in client.files.content(done.output_file_id).iter_lines()
        ]
        errors = [
            json.loads(line) for line in client.files.content(done.error_file_id).iter_lines()
        ]
    ids = [line["custom_id"] for line in output + errors]
    assert len(ids) == N and set(ids) == {f"req-{i}" for i in range(N)}  # each exactly once
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        answer = line["response"]["body"]
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
    [bad] = errors
    assert bad["custom_id"] == f"req-{BAD}" and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["param"].startswith("messages")
