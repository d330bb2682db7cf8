"""Model lifecycle with real workers: on-demand loads, eviction under a memory budget, idle
unload, backpressure and the admin endpoints."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from cellar.store import ModelStore
from tests.gateway import BUNDLED_NAME, Gateway, process_alive, start_gateway

pytestmark = pytest.mark.slow

GIB = 2**30


def _model(name: str, estimate: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": f"store:{BUNDLED_NAME}",
        "memory_estimate": estimate,
        "warmup": {"prompts": ["Hi"], "max_tokens": 2},
        "llamacpp": {"n_ctx": 512, "n_parallel": 2},
        **extra,
    }


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory, store: ModelStore) -> Iterator[Gateway]:
    """A 1.5 GiB budget: `first` and `second` (1 GiB each) cannot be loaded together."""
    models = [
        _model("first", "1GiB"),
        _model("second", "1GiB"),
        _model("idle", "100MiB", keep_alive="2s"),
        _model("narrow", "100MiB", max_concurrency=1, max_queue=1),
        _model("huge", "10GiB"),
    ]
    work = tmp_path_factory.mktemp("lifecycle")
    with start_gateway(work, store.root, models, server={"memory_budget": "1.5GiB"}) as gw:
        yield gw


def _ask(gateway: Gateway, model: str) -> str:
    reply = gateway.client().completions.create(model=model, prompt="Hello", max_tokens=3)
    return reply.choices[0].text


def test_models_start_stopped_and_load_on_demand(lifecycle: Gateway) -> None:
    states = {name: m["state"] for name, m in lifecycle.admin_models().items()}
    assert states["first"] == "stopped"
    assert _ask(lifecycle, "first") is not None
    first = lifecycle.admin_models()["first"]
    assert first["state"] == "ready" and first["pid"] and first["uptime_s"] is not None
    assert first["memory_estimate_bytes"] == GIB


def test_loading_past_the_budget_evicts_the_least_recently_used(lifecycle: Gateway) -> None:
    _ask(lifecycle, "first")
    first_pid = lifecycle.admin_models()["first"]["pid"]
    assert _ask(lifecycle, "second") is not None
    models = lifecycle.admin_models()
    assert models["second"]["state"] == "ready"
    assert models["first"]["state"] == "stopped"
    assert not process_alive(first_pid)
    assert _ask(lifecycle, "first") is not None  # and back again, in turn
    models = lifecycle.admin_models()
    assert (models["first"]["state"], models["second"]["state"]) == ("ready", "stopped")


def test_a_model_larger_than_the_budget_is_a_clear_503(lifecycle: Gateway) -> None:
    with lifecycle.http() as http:
        response = http.post("/v1/completions", json={"model": "huge", "prompt": "x"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "memory budget" in error["message"] and "1.50 GiB" in error["message"]


def test_idle_model_is_unloaded_after_keep_alive(lifecycle: Gateway) -> None:
    _ask(lifecycle, "idle")
    pid = lifecycle.admin_models()["idle"]["pid"]
    assert pid and process_alive(pid)
    deadline = time.monotonic() + 15
    while lifecycle.admin_models()["idle"]["state"] != "stopped":
        assert time.monotonic() < deadline, "the idle model was never unloaded"
        time.sleep(0.2)
    while process_alive(pid):
        assert time.monotonic() < deadline, "the idle model's process is still there"
        time.sleep(0.1)


def test_beyond_concurrency_and_queue_is_429_with_retry_after(lifecycle: Gateway) -> None:
    _ask(lifecycle, "narrow")  # loaded, so the turns below are not spent waiting for a load
    long = {"model": "narrow", "prompt": "Once", "max_tokens": 300, "ignore_eos": True}
    queued_status: list[int] = []

    def queued() -> None:  # waits in line for the one turn, in the background
        with httpx.Client(base_url=lifecycle.base_url, timeout=120) as client:
            queued_status.append(client.post("/v1/completions", json=long).status_code)

    with (
        httpx.Client(base_url=lifecycle.base_url, timeout=60) as one,
        one.stream("POST", "/v1/completions", json={**long, "stream": True}) as running,
    ):
        lines = running.iter_lines()
        next(lines)
        waiter = threading.Thread(target=queued)
        waiter.start()
        deadline = time.monotonic() + 10
        while lifecycle.admin_models()["narrow"]["waiting"] != 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.05)
        with lifecycle.http() as http:
            refused = http.post("/v1/completions", json=long)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    waiter.join(timeout=120)  # the first client left; the queued request gets its turn
    assert queued_status == [200]


def test_admin_unload_and_load(lifecycle: Gateway) -> None:
    _ask(lifecycle, "narrow")
    with lifecycle.http() as http:
        unloaded = http.post("/admin/models/narrow/unload").json()
        assert unloaded["state"] == "stopped" and unloaded["pid"] is None
        loaded = http.post("/admin/models/narrow/load").json()
        assert loaded["state"] == "ready" and loaded["pid"]
        assert http.post("/admin/models/nope/load").status_code == 404


def test_lifecycle_metrics(lifecycle: Gateway) -> None:
    with lifecycle.http() as http:
        text = http.get("/metrics").text
    assert 'cellar:model_state{model_name="first",state="ready"} 1.0' in text
    assert 'cellar:model_load_duration_seconds_count{model_name="first"}' in text
    assert "cellar:model_restarts_total" in text


def test_ready_means_every_preloaded_model_is_warm(
    tmp_path_factory: pytest.TempPathFactory, store: ModelStore
) -> None:
    work = tmp_path_factory.mktemp("preload")
    models = [_model("eager", "100MiB", preload=True), _model("lazy", "100MiB")]
    with start_gateway(work, store.root, models) as gw, gw.http() as http:
        assert gw.admin_models()["eager"]["state"] == "ready"
        assert gw.admin_models()["lazy"]["state"] == "stopped"
        assert http.get("/health/ready").status_code == 200


def test_models_ps_prints_the_admin_view(lifecycle: Gateway, tmp_path: Any) -> None:
    import subprocess
    import sys

    port = int(lifecycle.base_url.rsplit(":", 1)[1])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": port}}))
    result = subprocess.run(
        [sys.executable, "-m", "cellar", "models", "ps", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name in ("first", "second", "narrow", "huge"):
        assert name in result.stdout
