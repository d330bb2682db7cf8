"""What is being measured: the endpoint, what it serves, the machine it runs on, and a Cellar
gateway started for the run from a config file.

A Cellar gateway describes itself on `/admin/system` (machine, versions, model sha256 and
quantization). Any other server is described by the machine the benchmark runs on when it
listens on loopback, and left unknown otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from cellar.benchmarks.gateway import spawn_gateway
from cellar.benchmarks.suite.client import Client, ClientError, server_root
from cellar.benchmarks.suite.record import ColdStart, Endpoint, Hardware
from cellar.benchmarks.suite.workload import Prompt
from cellar.fingerprint import machine
from cellar.net import is_loopback

_SETTLE_S = 1800


def _loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any | None:
    try:
        async with session.get(url) as response:
            if response.status != 200:
                return None
            return await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def first_model(client: Client) -> str:
    listing = await _get_json(client.session, f"{client.root}/models")
    try:
        return str(listing["data"][0]["id"])  # type: ignore[index]
    except (TypeError, KeyError, IndexError):
        raise ClientError(f"{client.root}/models lists no model; pass --model") from None


async def describe(client: Client) -> tuple[Endpoint, Hardware]:
    """The endpoint and the hardware behind it, as far as they can be known."""
    system = await _get_json(client.session, f"{server_root(client.root)}/admin/system")
    client_machine = machine()
    endpoint = Endpoint(
        base_url=client.root,
        model=client.model,
        api=client.api,
        server_header=client.server_header,
    )
    if isinstance(system, dict):
        models = system.get("models") or []
        facts: dict[str, Any] = next((m for m in models if m.get("name") == client.model), {})
        endpoint.cellar = True
        endpoint.engine = facts.get("engine")
        endpoint.engine_version = facts.get("engine_version")
        endpoint.model_sha256 = facts.get("sha256")
        endpoint.quantization = facts.get("quantization")
        endpoint.deployment = facts.get("deployment")
        hardware = Hardware(
            server=system.get("machine"),
            server_source="cellar",
            server_versions=system.get("versions") or {},
            client=client_machine,
        )
    elif _loopback_url(client.root):
        hardware = Hardware(server=client_machine, server_source="local", client=client_machine)
    else:
        hardware = Hardware(server=None, server_source="unknown", client=client_machine)
    return endpoint, hardware


def describe_model_file(endpoint: Endpoint, path: Path) -> None:
    """Fill in sha256 and quantization from the model file a non-Cellar server loaded (Cellar
    reports them itself); raises OSError or StoreError for what is not a model."""
    from cellar.fingerprint import artifact_quantization
    from cellar.hashing import sha256_file, sha256_tree
    from cellar.store import sniff_format

    fmt = sniff_format(path)
    endpoint.model_sha256 = sha256_tree(path) if path.is_dir() else sha256_file(path)
    endpoint.quantization = artifact_quantization(path, fmt)


async def measure_cold(client: Client, runs: int, warm_runs: int = 3) -> ColdStart:
    """Unload the model through Cellar's admin API, then time the first token of a request
    (load + warm-up + first token); then the TTFT of the same request warm."""
    root = server_root(client.root)
    prompt = Prompt("Hello", None, 8)
    cold, warm = [], []
    for _ in range(runs):
        try:
            async with client.session.post(f"{root}/admin/models/{client.model}/unload") as r:
                if r.status != 200:
                    raise ClientError(
                        f"--cold needs a Cellar gateway: POST {root}/admin/models/"
                        f"{client.model}/unload answered HTTP {r.status}"
                    )
        except aiohttp.ClientError as exc:
            raise ClientError(f"--cold: cannot reach {root}/admin: {exc}") from None
        cold.append(await _ttft_ms(client, prompt))
        for _ in range(warm_runs):
            warm.append(await _ttft_ms(client, prompt))
    return ColdStart(cold_ttft_ms=cold, warm_ttft_ms=warm)


async def _ttft_ms(client: Client, prompt: Prompt) -> float:
    result = await client.send(prompt, time.perf_counter())
    if result.error is not None or result.ttft_s is None:
        raise ClientError(f"cold-start request failed: {result.error} {result.error_detail or ''}")
    return result.ttft_s * 1000.0


@contextmanager
def started_gateway(config: Path, log: Path, api_key: str | None = None) -> Iterator[str]:
    """`cellar serve --config CONFIG` on a free loopback port for the run; yields its URL.
    When the config requires keys, `api_key` must be an admin key (readiness is read from
    /admin/models)."""
    from cellar.engines.process import free_port

    port = free_port()
    env = {"CELLAR_HOST": "127.0.0.1", "CELLAR_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    with spawn_gateway(config, log, url, env=env, api_key=api_key, settle_timeout_s=_SETTLE_S):
        yield f"{url}/v1"
