"""Broken models fail alone, with a clear reason; the gateway keeps serving the rest."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cellar.store import ModelStore
from tests.gateway import MODEL, Gateway, default_models, start_gateway, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broken_gateway(
    tmp_path_factory: pytest.TempPathFactory, store: ModelStore
) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("broken")
    corrupt = work / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    tampered_src = work / "tampered.gguf"
    tampered_src.write_bytes(b"GGUF" + b"\x01" * 8192)
    store.import_file(tampered_src, "tampered-model")
    stored = store.file_of(store.get("tampered-model"))
    stored.write_bytes(b"GGUF" + b"\x02" * 8192)  # same size, different bytes
    models = [
        *default_models(),
        {"name": "broken", "source": str(corrupt), "chat_template": "gemma", "preload": True},
        {"name": "tampered", "source": "store:tampered-model", "preload": True},
    ]
    with start_gateway(work, store.root, models) as gw:
        yield gw


def test_corrupt_model_file_is_a_clear_503(broken_gateway: Gateway) -> None:
    state = broken_gateway.admin_models()["broken"]
    assert state["state"] == "failed"
    assert "corrupt.gguf" in state["error"] and "corrupt" in state["error"]
    with pytest.raises(openai.InternalServerError) as caught:
        broken_gateway.client().completions.create(model="broken", prompt="x", max_tokens=2)
    assert caught.value.status_code == 503
    assert caught.value.code == "model_unavailable"
    assert "corrupt.gguf" in caught.value.message


def test_tampered_store_model_is_refused_by_sha256(broken_gateway: Gateway) -> None:
    state = broken_gateway.admin_models()["tampered"]
    assert state["state"] == "failed"
    assert "sha256" in state["error"]
    with pytest.raises(openai.InternalServerError) as caught:
        broken_gateway.client().completions.create(model="tampered", prompt="x", max_tokens=2)
    assert caught.value.code == "model_unavailable"
    assert "sha256" in caught.value.message


def test_healthy_model_keeps_serving_beside_broken_ones(broken_gateway: Gateway) -> None:
    assert broken_gateway.process.poll() is None
    reply = broken_gateway.client().completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    assert reply.choices[0].text is not None
    with broken_gateway.http() as http:
        assert http.get("/health/live").status_code == 200
        ready = http.get("/health/ready")
    assert ready.status_code == 503
    assert {m["name"]: m["state"] for m in ready.json()["models"]} == {
        MODEL: "ready",
        "broken": "failed",
        "tampered": "failed",
    }


def test_ready_gateway_reports_ready(gateway: Gateway) -> None:
    with gateway.http() as http:
        assert http.get("/health/ready").status_code == 200


def test_missing_model_file_stops_startup_naming_file_and_key(tmp_path: Path) -> None:
    models = [{"name": "ghost", "source": "models/ghost.gguf"}]
    config = write_config(tmp_path / "bad.yaml", tmp_path / "store", 0, models)
    result = subprocess.run(
        [sys.executable, "-m", "cellar", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr
    assert "models[0].source" in result.stderr
    assert "ghost.gguf" in result.stderr
