"""A worker that dies mid-answer, and a gateway that is killed outright."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cellar.store import ModelStore
from tests.gateway import (
    MODEL,
    Gateway,
    default_models,
    process_alive,
    start_gateway,
    write_config,
)

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


def test_sigterm_lets_a_running_stream_finish_then_stops_workers(own_gateway: Gateway) -> None:
    [worker] = child_pids(own_gateway.process.pid)
    body = {
        "model": MODEL,
        "prompt": "Count:",
        "max_tokens": 40,
        "ignore_eos": True,
        "stream": True,
    }
    with own_gateway.http() as http, http.stream("POST", "/v1/completions", json=body) as reply:
        lines = reply.iter_lines()
        first = next(lines)
        own_gateway.process.terminate()  # SIGTERM while the stream is running
        rest = list(lines)
    events = [line for line in [first, *rest] if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"error"' in event for event in events)
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete.
    assert own_gateway.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in own_gateway.log_text()
    deadline = time.monotonic() + 15
    while process_alive(worker):
        assert time.monotonic() < deadline, "the worker outlived a graceful shutdown"
        time.sleep(0.1)


def test_warmup_command_prints_cold_and_warm_ttft(store: ModelStore, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", store.root, 0, default_models())
    result = subprocess.run(
        [sys.executable, "-m", "cellar", "warmup", MODEL, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"cold (\d+) ms, warm (\d+) ms", result.stdout)
    assert match, result.stdout
    assert int(match.group(1)) > 0 and int(match.group(2)) > 0


def test_a_hung_worker_is_restarted_after_failed_health_checks(own_gateway: Gateway) -> None:
    [worker] = child_pids(own_gateway.process.pid)
    os.kill(worker, signal.SIGSTOP)  # alive, but answers nothing
    try:
        deadline = time.monotonic() + 60
        while own_gateway.admin_models()[MODEL]["restarts"] < 1:
            assert time.monotonic() < deadline, "the hung worker was never replaced"
            time.sleep(0.5)
    finally:
        if process_alive(worker):
            os.kill(worker, signal.SIGCONT)
    reply = own_gateway.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert reply.choices[0].text is not None
    assert "stopped answering its health checks" in own_gateway.log_text()
    deadline = time.monotonic() + 30
    while process_alive(worker):
        assert time.monotonic() < deadline, "the hung worker was left behind"
        time.sleep(0.2)
