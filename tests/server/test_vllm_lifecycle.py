"""A vLLM worker's life in the gateway, as for llama.cpp: a crash is restarted, an idle worker
is unloaded with every process it spawned, and a killed gateway leaves none of them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from cellar.engines.guard import group_members
from cellar.store import ModelStore
from tests.gateway import MODEL, Gateway, process_alive, start_gateway, vllm_models

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

KEEP_ALIVE_S = 20


def _group(leader: int) -> list[int]:
    """The guard and everything vLLM spawned (the guard leads their process group)."""
    return group_members(leader)


def _wait_state(gw: Gateway, state: str, timeout_s: float = 300) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while (view := gw.admin_models()[MODEL])["state"] != state:
        assert time.monotonic() < deadline, f"never {state}: {view}\n{gw.log_text()[-3000:]}"
        time.sleep(0.5)
    return view


def _all_gone(pids: list[int], timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(process_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def vllm_gateway(
    tmp_path_factory: pytest.TempPathFactory, converted_store: ModelStore
) -> Iterator[Gateway]:
    [model] = vllm_models()
    model["keep_alive"] = f"{KEEP_ALIVE_S}s"
    with start_gateway(tmp_path_factory.mktemp("vllm-life"), converted_store.root, [model]) as gw:
        yield gw


def _ask(gw: Gateway) -> str:
    reply = gw.client().completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    return reply.choices[0].text


def test_crashed_vllm_worker_is_restarted(vllm_gateway: Gateway) -> None:
    view = _wait_state(vllm_gateway, "ready")
    guard = int(str(view["pid"]))
    group = _group(guard)
    assert len(group) >= 3, "the guard, vLLM's API server and its engine core"
    server = next(pid for pid in group if pid != guard)
    os.kill(server, signal.SIGKILL)
    assert _all_gone(group), "vLLM's processes outlived its crash"
    deadline = time.monotonic() + 300
    while (view := vllm_gateway.admin_models()[MODEL])["restarts"] < 1 or view["state"] != "ready":
        assert time.monotonic() < deadline, vllm_gateway.log_text()[-3000:]
        time.sleep(0.5)
    assert view["pid"] != guard
    assert _ask(vllm_gateway)


def test_idle_vllm_worker_is_unloaded_with_its_processes(vllm_gateway: Gateway) -> None:
    _ask(vllm_gateway)
    group = _group(int(str(_wait_state(vllm_gateway, "ready")["pid"])))
    _wait_state(vllm_gateway, "stopped", timeout_s=KEEP_ALIVE_S + 60)
    assert _all_gone(group), "an unloaded vLLM worker left processes behind"


def test_killed_gateway_leaves_no_vllm_process(vllm_gateway: Gateway) -> None:
    assert _ask(vllm_gateway)  # loads it again on demand
    group = _group(int(str(_wait_state(vllm_gateway, "ready")["pid"])))
    vllm_gateway.process.kill()
    vllm_gateway.process.wait()
    assert _all_gone(group), "vLLM outlived its gateway"
