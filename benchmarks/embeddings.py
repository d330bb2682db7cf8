"""Embedding throughput and latency: Cellar against sentence-transformers, in one run.

    python -m cellar.benchmarks.embeddings [--runs 3] [--threads N] [--batch 32]

The workload: 2,000 passages of 20-200 tokens (counted by the model's own tokenizer), drawn
reproducibly from a fixed vocabulary. The bundled embedding model (all-MiniLM-L6-v2) serves it:

- Cellar: a fresh gateway serving the f16 GGUF `make setup` made (llama.cpp, `--threads`
  threads), requests of `--batch` passages from 1 client, then from 8 concurrent clients; then
  one 16-token query at a time, end to end through the gateway (`--queries` of them).
- sentence-transformers: `SentenceTransformer(...).encode(passages, batch_size=--batch)` on the
  checkpoint `make setup` imported, in this process, torch on the same number of threads. What
  users would otherwise run.

Each figure is the median over `--runs`, and each ratio the median of the per-run ratios; the
order of the two alternates between runs. Targets:
Cellar's inputs/s at least 1.0x sentence-transformers', and the query p50 at most 15 ms.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from cellar.benchmarks.gateway import spawn_gateway, stored
from cellar.benchmarks.suite.workload import random_text
from cellar.engines.process import free_port

CHECKPOINT = "all-minilm-l6-v2"
GGUF = "all-minilm-l6-v2-f16"
PASSAGES = 2000
SHORTEST, LONGEST = 20, 200
QUERY_TOKENS = 16
CLIENTS = (1, 8)
N_BATCH = 256
"""Tokens per encode, as configs/default.yaml has it: llama.cpp's attention spans the whole batch
(masked between inputs), so several short encodes beat one long one. Measured with this
benchmark, 8 clients: 256 -> 73, 512 -> 67, 1024 -> 62 inputs/s."""


def passages(tokenizer: Any, count: int = PASSAGES, seed: int = 0) -> list[str]:
    """`count` texts of SHORTEST-LONGEST tokens each (with [CLS] and [SEP])."""
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < count:
        target = rng.randint(SHORTEST, LONGEST)
        words = random_text(target, seed=rng.randrange(2**31)).split()
        while len(tokenizer.encode(" ".join(words)).ids) > target:
            words = words[: max(1, len(words) - 4)]
        texts.append(" ".join(words))
    return texts


def query(tokenizer: Any, seed: int) -> str:
    words = random_text(QUERY_TOKENS, seed=seed).split()
    while len(tokenizer.encode(" ".join(words)).ids) > QUERY_TOKENS:
        words.pop()
    return " ".join(words)


def _config(work: Path, model: Path, threads: int) -> Path:
    deployment = {
        "name": "minilm",
        "source": str(model),
        "task": "embed",
        "preload": True,
        "llamacpp": {"n_ctx": 256, "n_parallel": 64, "n_batch": N_BATCH, "n_threads": threads},
    }
    config = {
        "server": {"port": free_port(), "log_level": "warning"},
        "store": {"path": str(work / "store")},
        "models": [deployment],
    }
    path = work / "cellar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cellar_rate(url: str, texts: list[str], clients: int, batch: int) -> float:
    """Inputs/s embedding every text in requests of `batch`, `clients` at a time."""
    chunks: queue.Queue[list[str]] = queue.Queue()
    for start in range(0, len(texts), batch):
        chunks.put(texts[start : start + batch])
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                try:
                    chunk = chunks.get_nowait()
                except queue.Empty:
                    return
                answer = http.post("/v1/embeddings", json={"model": "minilm", "input": chunk})
                if answer.status_code != 200 or len(answer.json()["data"]) != len(chunk):
                    failures.append(answer.text[:200])

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return len(texts) / elapsed


def query_latency_ms(url: str, questions: list[str]) -> float:
    """Median end-to-end time of one short query at a time (a new request each)."""
    times = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for text in questions:
            started = time.perf_counter()
            answer = http.post("/v1/embeddings", json={"model": "minilm", "input": text})
            times.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    return statistics.median(times)


def sentence_transformers_rate(model: Any, texts: list[str], batch: int) -> float:
    started = time.perf_counter()
    model.encode(texts, batch_size=batch)
    return len(texts) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=cores)
    parser.add_argument("--batch", type=int, default=32, help="texts per request / encode batch")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    torch.set_num_threads(args.threads)
    checkpoint, gguf = stored(CHECKPOINT), stored(GGUF)
    reference = SentenceTransformer(str(checkpoint), device="cpu")
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    texts = passages(tokenizer)
    questions = [query(tokenizer, seed) for seed in range(args.queries)]
    tokens = sum(len(tokenizer.encode(t).ids) for t in texts)
    print(
        f"{len(texts)} passages, {tokens / len(texts):.0f} tokens on average; batch {args.batch}; "
        f"{args.threads} threads; {args.runs} runs",
        flush=True,
    )
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cellar-bench-embed-") as tmp:
        work = Path(tmp)
        config = _config(work, gguf, args.threads)
        port = yaml.safe_load(config.read_text())["server"]["port"]
        url = f"http://127.0.0.1:{port}"
        with spawn_gateway(config, work / "gateway.log", url):
            sentence_transformers_rate(reference, texts[:64], args.batch)  # warm both up
            cellar_rate(url, texts[:64], 1, args.batch)
            for run in range(args.runs):
                steps: list[tuple[str, Callable[[], float]]] = [
                    ("st", lambda: sentence_transformers_rate(reference, texts, args.batch)),
                    *(
                        (f"cellar-{c}", lambda c=c: cellar_rate(url, texts, c, args.batch))
                        for c in CLIENTS
                    ),
                ]
                for name, step in steps if run % 2 == 0 else reversed(steps):
                    figures.setdefault(name, []).append(step())
                figures.setdefault("query", []).append(query_latency_ms(url, questions))
                print(
                    f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in figures.items())
                )
    print()
    print("\n".join(table(figures, args.batch)))
    return 0


def table(figures: dict[str, list[float]], batch: int) -> list[str]:
    """Medians of each figure, and the median of the per-run ratios (runs drift together)."""
    medians = {key: statistics.median(values) for key, values in figures.items()}
    runs = len(figures["st"])
    lines = [
        f"| figure (median of {runs} runs) | Cellar | sentence-transformers | ratio | per run |",
        "|---|---:|---:|---:|---|",
    ]
    for clients in CLIENTS:
        ours = figures[f"cellar-{clients}"]
        ratios = [a / b for a, b in zip(ours, figures["st"], strict=True)]
        lines.append(
            f"| inputs/s, {clients} client{'s' if clients > 1 else ''}, batch {batch} "
            f"| {medians[f'cellar-{clients}']:.1f} | {medians['st']:.1f} "
            f"| {statistics.median(ratios):.2f}x | {' '.join(f'{r:.2f}' for r in ratios)} |"
        )
    lines.append(
        f"| one {QUERY_TOKENS}-token query, p50 ms (through the gateway) "
        f"| {medians['query']:.1f} | - | target <= 15 | "
        f"{' '.join(f'{q:.1f}' for q in figures['query'])} |"
    )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
