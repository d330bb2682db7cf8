"""The llama.cpp worker on its own, as a remote worker would run: a loopback TCP port and a
secret the test knows (under a gateway a worker has a private socket and a secret nobody sees)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cellar.child import python_module
from cellar.engines.channel import SECRET_ENV
from cellar.engines.llamacpp.spec import WorkerSpec
from cellar.engines.process import free_port
from tests.gateway import MODEL, N_CTX

_START_S = 120.0


@dataclass(frozen=True)
class BareWorker:
    url: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def worker_spec(gguf: Path, **settings: Any) -> WorkerSpec:
    """A spec for the bundled model on the CPU; `settings` override the defaults."""
    defaults: dict[str, Any] = {
        "name": MODEL,
        "model_path": gguf,
        "n_ctx": N_CTX,
        "n_parallel": 2,
        "n_threads": None,
        "n_batch": 512,
        "n_gpu_layers": 0,
        "chat_template": None,
        "log_level": "warning",
    }
    return WorkerSpec(**{**defaults, **settings})


def worker_argv(gguf: Path, *where: str, **settings: Any) -> list[str]:
    spec = worker_spec(gguf, **settings)
    return python_module("cellar.engines.llamacpp.worker", *where, "--spec", spec.model_dump_json())


@contextmanager
def bare_worker(
    gguf: Path, log: Path, secret: str = "the-test-knows-this", **settings: Any
) -> Iterator[BareWorker]:
    """A worker for `gguf` (the bundled model's spec, `settings` overriding it)."""
    port = free_port()
    argv = worker_argv(gguf, "--port", str(port), **settings)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, env={**os.environ, SECRET_ENV: secret}, stdout=sink, stderr=subprocess.STDOUT
        )
    worker = BareWorker(f"http://127.0.0.1:{port}", secret)
    try:
        deadline = time.monotonic() + _START_S
        while True:
            try:
                if httpx.get(f"{worker.url}/health", headers=worker.headers).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield worker
    finally:
        process.terminate()
        process.wait(timeout=30)
