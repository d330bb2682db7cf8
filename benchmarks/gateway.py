"""Starting a real gateway process (`cellar serve`): one helper for the tests and every benchmark.

`spawn_gateway` runs `cellar serve --config CONFIG` with its output in a log file, waits until the
gateway answers and no model is still loading or warming up, and stops it (with its workers)
on the way out. A gateway that exits before it settles raises with the end of its log.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from cellar.child import python_module
from cellar.errors import StoreError
from cellar.store import ModelStore, default_store_root

BUNDLED_NAME = "gemma-3-270m-q4_k_m"
"""The bundled model's name in the store (`make setup` imports it)."""
ANSWER_TIMEOUT_S = 120.0
"""How long a fresh gateway may take to answer at all."""
SETTLE_TIMEOUT_S = 600.0
"""How long its preloaded models may take to load and warm up."""


def bundled_gguf() -> Path:
    """The bundled model's GGUF in the user's model store (`make setup` imports it there)."""
    return stored(BUNDLED_NAME)


def stored(name: str) -> Path:
    """A model `make setup` put in the user's model store: its file or checkpoint directory."""
    store = ModelStore(default_store_root())
    try:
        return store.file_of(store.get(name))
    except StoreError as exc:
        raise SystemExit(f"{exc}; run `make setup` first, or pass --model") from None


def gateway_argv(config: Path) -> list[str]:
    return python_module("cellar", "serve", "--config", str(config))


def admin_models(http: httpx.Client) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = http.get("/admin/models").json()["models"]
    return models


def wait_settled(
    http: httpx.Client,
    process: subprocess.Popen[bytes],
    log: Path,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
) -> None:
    """Until the gateway answers, then until every model is ready, stopped or failed."""
    started = time.monotonic()
    answered = False
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"the gateway exited (code {process.returncode}):\n{tail}")
        try:
            states = {m["state"] for m in admin_models(http)}
            answered = True
        except (httpx.HTTPError, ValueError, KeyError):
            states = {"unreachable"}
        if not states & {"loading", "warming", "unreachable"}:
            return
        limit = settle_timeout_s if answered else ANSWER_TIMEOUT_S
        if time.monotonic() - started > limit:
            tail = log.read_text(errors="replace")[-4000:]
            raise TimeoutError(f"the gateway did not settle ({sorted(states)}); see {log}:\n{tail}")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """SIGTERM (the gateway stops its workers), then SIGKILL if it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def spawn_gateway(
    config: Path,
    log: Path,
    base_url: str,
    *,
    env: Mapping[str, str] | None = None,
    api_key: str | None = None,
    ca: Path | None = None,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
) -> Iterator[subprocess.Popen[bytes]]:
    """`cellar serve` with `config`, which makes it listen at `base_url`; yields the process once
    settled. `api_key` must be an admin key when the config requires keys (readiness is read
    from /admin/models); `ca` verifies an HTTPS gateway."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            gateway_argv(config),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
    try:
        with httpx.Client(base_url=base_url, timeout=5, headers=headers, verify=verify) as http:
            wait_settled(http, process, log, settle_timeout_s)
        yield process
    finally:
        stop(process)
