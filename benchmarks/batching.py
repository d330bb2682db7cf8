"""Continuous batching: Cellar's gateway vs llama-cpp-python's own server, in one run.

    python -m cellar.benchmarks.batching [--clients 1,4,8] [--max-tokens 128] [--rounds 2]

Both servers serve the same GGUF with the same thread count, one after the other on this
machine. At each concurrency level, every client streams `rounds` completions of `max_tokens`
tokens back to back (same prompts and seeds for both servers). Output tokens are counted by
re-tokenizing each streamed text with the model's own tokenizer, the same way for both, since
llama-cpp-python's server sends no usage in streams. One warm-up request per server is not
counted. Prints aggregate output tokens/s, mean TTFT, and Cellar's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import llama_cpp
import yaml

from cellar.benchmarks.gateway import bundled_gguf, spawn_gateway
from cellar.engines.process import free_port

MODEL_NAME = "bench-model"
TOPICS = [
    "The ship sailed",
    "The old castle",
    "In the laboratory",
    "The market opened",
    "Under the bridge",
    "The orchestra played",
    "At the border",
    "The letter said",
]


@dataclass(frozen=True)
class Level:
    server: str
    clients: int
    tokens: int
    wall_s: float
    ttfts: list[float]

    @property
    def throughput(self) -> float:
        return self.tokens / self.wall_s

    @property
    def mean_ttft(self) -> float:
        return statistics.mean(self.ttfts)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


@contextmanager
def _running(argv: list[str], ready_url: str, log: Path) -> Iterator[None]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(ready_url, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cellar_config(model: Path, threads: int, slots: int, work: Path, port: int) -> Path:
    config = {
        "server": {"port": port, "log_level": "warning"},
        "store": {"path": str(work / "store")},
        "models": [
            {
                "name": MODEL_NAME,
                "source": str(model),
                "llamacpp": {"n_ctx": 2048, "n_parallel": slots, "n_threads": threads},
            }
        ],
    }
    path = work / "cellar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def baseline_server(model: Path, threads: int, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--interrupt_requests",
        "False",
    ]


def _text_of(raw: bytes) -> str:
    """The completion text in a captured SSE stream."""
    parts = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:]).get("choices") or [{}]
            parts.append(choices[0].get("text") or "")
    return "".join(parts)


async def _stream(
    client: httpx.AsyncClient, prompt: str, seed: int, max_tokens: int
) -> tuple[bytes, float]:
    """Stream one completion, keeping the raw bytes: parsing waits until the level is over,
    so the load generator spends as little CPU as possible while the servers work."""
    body = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
    }
    started = time.perf_counter()
    ttft, chunks = 0.0, []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            if not ttft and b"data: {" in chunk:
                ttft = time.perf_counter() - started  # the first event carries the first token
            chunks.append(chunk)
    return b"".join(chunks), ttft


async def _client(
    base_url: str, index: int, rounds: int, max_tokens: int
) -> list[tuple[bytes, float]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        out = []
        for r in range(rounds):
            prompt = f"Chapter {index + 1}. {TOPICS[index % len(TOPICS)]}"
            out.append(await _stream(client, prompt, seed=100 * index + r, max_tokens=max_tokens))
        return out


async def measure(
    name: str, base_url: str, clients: int, rounds: int, max_tokens: int, vocab: llama_cpp.Llama
) -> Level:
    started = time.perf_counter()
    per_client = await asyncio.gather(
        *(_client(base_url, i, rounds, max_tokens) for i in range(clients))
    )
    wall = time.perf_counter() - started
    results = [item for items in per_client for item in items]
    texts = [_text_of(raw) for raw, _ in results]
    tokens = sum(len(vocab.tokenize(text.encode(), add_bos=False)) for text in texts)
    return Level(name, clients, tokens, wall, [ttft for _, ttft in results])


def _levels(
    name: str, base: str, levels: list[int], rounds: int, max_tokens: int, vocab: llama_cpp.Llama
) -> list[Level]:
    asyncio.run(measure(name, base, 1, 1, 8, vocab))  # warm-up, not counted
    results = []
    for clients in levels:
        level = asyncio.run(measure(name, base, clients, rounds, max_tokens, vocab))
        print(
            f"  {name:17s} {clients:2d} clients: {level.throughput:6.1f} tok/s, "
            f"mean TTFT {level.mean_ttft:.3f} s",
            flush=True,
        )
        results.append(level)
    return results


def run(model: Path, levels: list[int], rounds: int, max_tokens: int, threads: int) -> list[Level]:
    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    with tempfile.TemporaryDirectory(prefix="cellar-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = cellar_config(model, threads, max(levels), work, port)
        with spawn_gateway(config, work / "cellar.log", base):
            results = _levels("cellar", base, levels, rounds, max_tokens, vocab)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        argv = baseline_server(model, threads, port)
        with _running(argv, base + "/v1/models", work / "llama-cpp-python.log"):
            results += _levels("llama-cpp-python", base, levels, rounds, max_tokens, vocab)
    return results


def report(results: list[Level]) -> str:
    by = {(r.server, r.clients): r for r in results}
    lines = [
        "clients | cellar tok/s | llama-cpp-python tok/s | ratio | cellar TTFT | baseline TTFT",
        "-------:|-------------:|-----------------------:|------:|------------:|-------------:",
    ]
    for clients in sorted({r.clients for r in results}):
        ours, base = by[("cellar", clients)], by[("llama-cpp-python", clients)]
        lines.append(
            f"{clients:7d} | {ours.throughput:12.1f} | {base.throughput:22.1f} | "
            f"{ours.throughput / base.throughput:4.2f}x | {ours.mean_ttft:9.3f} s | "
            f"{base.mean_ttft:10.3f} s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled GGUF")
    parser.add_argument("--clients", default="1,4,8", help="concurrency levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    args.model = args.model or bundled_gguf()
    print(
        f"model {args.model.name}, {args.threads} threads, {args.max_tokens} tokens per request, "
        f"{args.rounds} request(s) per client per level"
    )
    results = run(args.model, levels, args.rounds, args.max_tokens, args.threads)
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
