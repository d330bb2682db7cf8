"""Cellar against llama.cpp's own C++ `llama-server`, on the same GGUF, in one run.

    python -m cellar.benchmarks.llama_server [--runs 3] [--threads 2]

llama-server is built once from the llama-cpp-python source package that `make setup`
downloads (the same llama.cpp that the installed llama-cpp-python vendors), into
~/.cache/cellar/llama-server-<version>; it is a baseline only and never shipped. Both servers get
the same GGUF, thread count, 8 slots of 4096 tokens, flash attention and full sliding-window
KV (so both can reuse prompt prefixes). Every request uses a fresh connection (llama-server has
been seen to drop keep-alive connections) and asks for a fixed number of tokens (`ignore_eos`),
so both servers produce the same amount of text.

Workloads:
- 1, 4 and 8 clients, each streaming 128-token completions back to back (4 for one client, 2
  for more): output tok/s.
- Shared prefix chat: 8 clients, 2 rounds each, a ~650-token system prompt shared by all plus a
  question of their own, 64 tokens: TTFT p50 / p90 over the 16 requests, and output tok/s.

This machine is shared and its speed drifts by several percent within minutes, so each run
starts both servers fresh and leaves them up (an idle server takes no CPU), then measures each
workload on one server right after the other, alternating which goes first. Printed: the median
over the runs of each figure, and the median of the per-run ratios (each from two measurements
seconds apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import platformdirs
import yaml

from cellar.benchmarks.batching import TOPICS, _running
from cellar.benchmarks.gateway import bundled_gguf, spawn_gateway
from cellar.engines.process import free_port

VERSION = "0.3.36"
SDIST = (
    Path.home() / ".cache" / "cellar" / "wheels" / "sdist" / f"llama_cpp_python-{VERSION}.tar.gz"
)
MODEL = "bench-model"
SLOTS = 8
N_CTX = 4096
CFLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
"""As `make setup` builds llama-cpp-python on x86-64 (ggml's AMX kernels crash on some VMs)."""
SYSTEM = " ".join(
    f"Rule {i}: when a customer asks about order {i}, answer politely, cite rule {i}, and keep "
    "the reply under three sentences."
    for i in range(21)
)


def build_llama_server(sdist: Path = SDIST) -> Path:
    """llama-server built from the sdist's vendored llama.cpp (once; cached)."""
    root = Path(platformdirs.user_cache_dir("cellar")) / f"llama-server-{VERSION}"
    binary = root / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    if not sdist.is_file():
        raise SystemExit(f"{sdist} is missing: run `make setup` first")
    print(f"building llama-server from {sdist.name} (10-15 min on 2 cores, once)...", flush=True)
    source = root / "src"
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.name.startswith(prefix) and (member.isfile() or member.isdir()):
                member.name = member.name.removeprefix(prefix)
                if member.name:
                    tar.extract(member, source, filter="data")
    env = {**os.environ, "CFLAGS": CFLAGS, "CXXFLAGS": CFLAGS}
    configure = [
        "cmake", "-S", str(source), "-B", str(root / "build"), "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
    ]  # fmt: skip
    subprocess.run(configure, check=True, env=env, capture_output=True)
    jobs = str(os.cpu_count() or 2)
    build = ["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", jobs]
    subprocess.run(build, check=True, env=env, capture_output=True)
    return binary


def llama_server_argv(binary: Path, model: Path, threads: int, port: int) -> list[str]:
    return [
        str(binary), "-m", str(model), "-a", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "-t", str(threads), "-tb", str(threads), "-np", str(SLOTS), "-c", str(SLOTS * N_CTX),
        "-fa", "on", "--swa-full",
    ]  # fmt: skip


def cellar_config(model: Path, threads: int, work: Path, port: int) -> Path:
    config = {
        "server": {"port": port, "log_level": "warning"},
        "store": {"path": str(work / "store")},
        "auth": {"mode": "none"},
        "audit": {"enabled": False},
        "models": [
            {
                "name": MODEL,
                "source": str(model),
                "chat_template": "gemma",
                "preload": True,
                "warmup": {"enabled": False},
                "llamacpp": {"n_ctx": N_CTX, "n_parallel": SLOTS, "n_threads": threads},
            }
        ],
    }
    path = work / "cellar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _request(base: str, path: str, body: dict[str, Any]) -> float:
    """Stream one request on a fresh connection; seconds to its first content event."""
    started = time.perf_counter()
    ttft = 0.0
    async with (
        httpx.AsyncClient(base_url=base, timeout=600, trust_env=False) as client,
        client.stream("POST", path, json={**body, "stream": True}) as response,
    ):
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            if not ttft and (b'"content":"' in chunk or b'"text":"' in chunk):
                ttft = time.perf_counter() - started
    return ttft or time.perf_counter() - started


@dataclass(frozen=True)
class Figures:
    tok_s: float
    ttft_p50: float
    ttft_p90: float


def _figures(tokens: int, wall: float, ttfts: list[float]) -> Figures:
    ordered = sorted(ttfts)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return Figures(tokens / wall, statistics.median(ordered), p90)


async def completions(base: str, clients: int, rounds: int, tokens: int = 128) -> Figures:
    async def client(i: int) -> list[float]:
        body = {"model": MODEL, "max_tokens": tokens, "ignore_eos": True, "temperature": 0.8}
        return [
            await _request(
                base, "/v1/completions", {**body, "prompt": f"Chapter {i}. {TOPICS[i % 8]}"}
            )
            for _ in range(rounds)
        ]

    started = time.perf_counter()
    ttfts = [t for ts in await asyncio.gather(*(client(i) for i in range(clients))) for t in ts]
    return _figures(clients * rounds * tokens, time.perf_counter() - started, ttfts)


async def shared_prefix(base: str, clients: int = 8, rounds: int = 2, tokens: int = 64) -> Figures:
    async def client(i: int) -> list[float]:
        out = []
        for r in range(rounds):
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"I am customer {i}. What does rule {i + 8 * r} say?"},
            ]
            body = {"model": MODEL, "messages": messages, "max_tokens": tokens, "ignore_eos": True}
            out.append(await _request(base, "/v1/chat/completions", body))
        return out

    started = time.perf_counter()
    ttfts = [t for ts in await asyncio.gather(*(client(i) for i in range(clients))) for t in ts]
    return _figures(clients * rounds * tokens, time.perf_counter() - started, ttfts)


WORKLOADS: dict[str, Callable[[str], Awaitable[Figures]]] = {
    "1 client": lambda base: completions(base, 1, rounds=4),
    "4 clients": lambda base: completions(base, 4, rounds=2),
    "8 clients": lambda base: completions(base, 8, rounds=2),
    "shared prefix": shared_prefix,
}
SERVERS = ("cellar", "llama-server")
Run = dict[str, dict[str, Figures]]
"""server -> workload -> figures"""


async def _measure(bases: dict[str, str], run: int) -> Run:
    """Every workload on both servers, one right after the other, the first alternating."""
    for base in bases.values():
        await completions(base, 1, rounds=1, tokens=8)  # warm-up, not counted
    seen: Run = {server: {} for server in bases}
    for i, (workload, measure) in enumerate(WORKLOADS.items()):
        order = SERVERS if (run + i) % 2 == 0 else SERVERS[::-1]
        for server in order:
            seen[server][workload] = await measure(bases[server])
    return seen


@contextmanager
def _llama_server(binary: Path, model: Path, threads: int, log: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _running(llama_server_argv(binary, model, threads, port), f"{base}/health", log):
        yield base


@contextmanager
def _cellar(model: Path, threads: int, work: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with spawn_gateway(cellar_config(model, threads, work, port), work / "cellar.log", base):
        yield base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh starts of each server")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled GGUF")
    args = parser.parse_args(argv)
    model = args.model or bundled_gguf()
    binary = build_llama_server()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="cellar-vs-llama-server-") as tmp:
        work = Path(tmp)
        for run in range(args.runs):
            log = work / f"llama-server-{run}.log"
            with (
                _cellar(model, args.threads, work) as ours,
                _llama_server(binary, model, args.threads, log) as theirs,
            ):
                runs.append(asyncio.run(_measure({"cellar": ours, "llama-server": theirs}, run)))
            print(f"run {run + 1}/{args.runs} done", flush=True)
    print(report(runs, args.threads))
    return 0


def report(runs: list[Run], threads: int) -> str:
    def figure_of(run: Run, server: str, workload: str, figure: str) -> float:
        value: float = getattr(run[server][workload], figure)
        return value

    lines = [
        f"Cellar vs llama-server (llama.cpp {VERSION}'s), {threads} threads, "
        f"median of {len(runs)} runs",
        "",
        "| workload | figure | Cellar | llama-server | ratio (median of runs) | ratios |",
        "|---|---|---:|---:|---:|---|",
    ]
    for workload in WORKLOADS:
        figures = ["tok_s", "ttft_p50", "ttft_p90"] if workload == "shared prefix" else ["tok_s"]
        for figure in figures:
            ours, theirs = (
                [figure_of(run, server, workload, figure) for run in runs] for server in SERVERS
            )
            ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
            unit = "tok/s" if figure == "tok_s" else f"TTFT {figure[-3:]} (s)"
            lines.append(
                f"| {workload} | {unit} | {statistics.median(ours):.2f} | "
                f"{statistics.median(theirs):.2f} | {statistics.median(ratios):.2f}x | "
                + " ".join(f"{r:.2f}" for r in ratios)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
