"""What keeping LoRA adapters out of each other's batches costs the llama.cpp worker, in one run.

    python -m cellar.benchmarks.adapters [--clients 8] [--max-tokens 64] [--rounds 3]

An adapter applies to a whole llama.cpp context, so the worker decodes one adapter's sequences
(or the base model's) per step, taking turns. This benchmark serves the bundled model with one
adapter (trained here for a few steps, unless --store/--adapter name one) and runs three loads
of `clients` concurrent streams, each streaming `rounds` completions of exactly `max_tokens`
tokens: all on the base model, all on the adapter, and half and half. It prints aggregate output
tokens/s, median TTFT and TPOT, and each load's throughput as a ratio of the base-only load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import httpx
import yaml

from cellar.benchmarks.gateway import bundled_gguf, spawn_gateway
from cellar.child import python_module
from cellar.engines.process import free_port

DATA = resources.files("cellar.finetune") / "examples" / "mascot-train.jsonl"
PROMPTS = ["The ship sailed", "The old castle", "In the laboratory", "The market opened"]


def cellar(*args: str) -> None:
    subprocess.run(python_module("cellar", *args), check=True, capture_output=True)


def train_adapter(store: Path) -> str:
    cellar("models", "import", str(bundled_gguf()), "--name", "base", "--store", str(store))
    cellar(
        "finetune", "base", "--data", str(DATA), "--name", "bench", "--steps", "6",
        "--chat-template", "gemma", "--store", str(store),
    )  # fmt: skip
    return "bench"


@contextmanager
def gateway(work: Path, store: Path, base: str, adapter: str, clients: int) -> Iterator[str]:
    port = free_port()
    config = {
        "server": {"port": port, "log_level": "warning"},
        "store": {"path": str(store)},
        "auth": {"mode": "none"},
        "audit": {"enabled": False},
        "models": [
            {
                "name": "m",
                "source": f"store:{base}",
                "engine": "llamacpp",
                "preload": True,
                "llamacpp": {"n_ctx": 512, "n_parallel": clients},
                "adapters": [{"name": "a", "source": f"store:{adapter}"}],
            }
        ],
    }
    path = work / "cellar.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    with spawn_gateway(path, work / "gateway.log", url):
        yield url


async def stream(client: httpx.AsyncClient, model: str, prompt: str, tokens: int) -> list[float]:
    """Arrival times of the chunks, from the request's start."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "stream": True}
    body |= {"ignore_eos": True, "temperature": 0}
    started, times = time.perf_counter(), []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter() - started)
    return times


async def load(url: str, models: list[str], tokens: int, rounds: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one_client(index: int, model: str) -> list[list[float]]:
            return [
                await stream(client, model, PROMPTS[(index + r) % len(PROMPTS)], tokens)
                for r in range(rounds)
            ]

        started = time.perf_counter()
        results = await asyncio.gather(*(one_client(i, m) for i, m in enumerate(models)))
        wall = time.perf_counter() - started
    runs = [times for per_client in results for times in per_client]
    chunks = sum(len(times) for times in runs)
    return {
        "tok_s": chunks / wall,
        "ttft_ms": statistics.median(times[0] for times in runs) * 1000,
        "tpot_ms": statistics.median((t[-1] - t[0]) / (len(t) - 1) for t in runs) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", type=Path, help="A store holding --base and --adapter")
    parser.add_argument("--base", default="base")
    parser.add_argument("--adapter", help="A stored adapter (default: train one here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cellar-bench-adapters-") as temp:
        work = Path(temp)
        store = args.store or work / "store"
        adapter = args.adapter or train_adapter(store)
        half = args.clients // 2
        loads = {
            "base only": ["m"] * args.clients,
            "adapter only": ["m:a"] * args.clients,
            "half and half": ["m"] * half + ["m:a"] * (args.clients - half),
        }
        with gateway(work, store, args.base, adapter, args.clients) as url:
            asyncio.run(load(url, ["m", "m:a"], 8, 1))  # warm both paths, not counted
            figures = {
                name: asyncio.run(load(url, models, args.max_tokens, args.rounds))
                for name, models in loads.items()
            }
    reference = figures["base only"]["tok_s"]
    print(
        f"{args.clients} concurrent streams x {args.rounds} rounds x {args.max_tokens} tokens, "
        "llama.cpp worker, bundled Gemma 3 270M Q4_K_M"
    )
    print(f"{'load':<15} {'output tok/s':>12} {'vs base':>8} {'TTFT p50':>10} {'TPOT p50':>10}")
    for name, row in figures.items():
        print(
            f"{name:<15} {row['tok_s']:>12.1f} {row['tok_s'] / reference:>7.2f}x "
            f"{row['ttft_ms']:>8.0f}ms {row['tpot_ms']:>8.1f}ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
