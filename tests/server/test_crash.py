"""A worker that dies mid-answer, and a gateway that is killed outright."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cellar.store import ModelStore
from tests.gateway import MODEL, Gateway, process_alive, start_gateway

pytestmark = pytest.mark.slow


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent`, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent:
            children.append(int(entry.name))
    return children


@pytest.fixture
def own_gateway(tmp_path: Path, store: ModelStore) -> Iterator[Gateway]:
    with start_gateway(tmp_path, store.root) as gw:
        yield gw


def test_worker_crash_mid_stream_is_an_error_event_and_gateway_survives(
    own_gateway: Gateway,
) -> None:
    [worker] = child_pids(own_gateway.process.pid)
    stream = own_gateway.client().completions.create(
        model=MODEL, prompt="Write a long story.", max_tokens=2000, stream=True
    )
    received = []
    with stream, pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
            if len(received) == 3:
                os.kill(worker, signal.SIGKILL)
    assert len(received) >= 3
    assert "failed" in caught.value.message or "ended the stream" in caught.value.message

    # The next request restarts the worker (no gateway restart) and is answered.
    started = time.monotonic()
    reply = own_gateway.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert reply.choices[0].text is not None
    assert time.monotonic() - started < 30
    state = own_gateway.admin_models()[MODEL]
    assert state["state"] == "ready"
    assert state["restarts"] == 1
    assert "signal 9" in (state["error"] or "") or state["error"] is None
    [new_worker] = child_pids(own_gateway.process.pid)
    assert new_worker != worker


def test_killed_gateway_leaves_no_worker_behind(own_gateway: Gateway) -> None:
    [worker] = child_pids(own_gateway.process.pid)
    assert process_alive(worker)
    own_gateway.process.kill()
    own_gateway.process.wait()
    deadline = time.monotonic() + 15
    while process_alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its gateway"
        time.sleep(0.1)
