"""Interactive latency beside a running batch: what the admission queue's priorities buy.

    python -m cellar.benchmarks.batch_priority [--runs 3] [--clients 4] [--requests 10]

Each run starts a fresh gateway serving the bundled model (llama.cpp, 8 slots, the default
`batches:` settings: batch requests at priority 10, holding at most an eighth of the slots
while interactive requests are about). Then, one after the other:

1. idle: `--clients` streaming chat clients, each sending `--requests` requests back to back;
   their time to first token (TTFT).
2. a batch of `--batch` chat requests is uploaded and started through the Batches API; its
   requests/s alone over `--window` seconds.
3. the same interactive clients again, the batch running: their TTFT, and the batch's
   requests/s meanwhile.
4. the batch's requests/s over `--window` seconds after the interactive clients stop (once the
   interactive grace period has passed). The batch is then cancelled.

Printed: per run and the medians over runs of the TTFT p50 idle and beside the batch, their
ratio (target: at most 1.5), and the batch's requests/s alone, during and after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from cellar.benchmarks.gateway import bundled_gguf, spawn_gateway
from cellar.engines.process import free_port

MODEL = "bundled"
SLOTS = 8
GRACE_S = 5.0
TOPICS = ("the sea", "a clock", "bread", "winter", "a bridge", "music", "rain", "a garden")


def _config(work: Path, port: int, share: float) -> Path:
    config = {
        "server": {"port": port, "log_level": "warning"},
        "store": {"path": str(work / "store")},
        "auth": {"mode": "none"},
        "audit": {"path": str(work / "audit.jsonl")},
        "batches": {
            "dir": str(work / "batches"),
            "interactive_grace": GRACE_S,
            "background_share": share,
        },
        "models": [
            {
                "name": MODEL,
                "source": str(bundled_gguf()),
                "chat_template": "gemma",
                "preload": True,
                "llamacpp": {"n_ctx": 4096, "n_parallel": SLOTS},
            }
        ],
    }
    path = work / "cellar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _chat(prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def interactive_ttfts(url: str, clients: int, requests: int, max_tokens: int) -> list[float]:
    """TTFT (s) of every request of `clients` streaming clients sending back to back."""
    ttfts: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=300, trust_env=False) as http:
            for n in range(requests):
                topic = TOPICS[(index + n) % len(TOPICS)]
                body = _chat(f"Write two sentences about {topic}.", max_tokens, True)
                started = time.monotonic()
                first: float | None = None
                with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                    reply.raise_for_status()
                    for line in reply.iter_lines():
                        if first is None and '"content"' in line:
                            first = time.monotonic() - started
                if first is not None:
                    with lock:
                        ttfts.append(first)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ttfts


def start_batch(http: httpx.Client, size: int, max_tokens: int) -> str:
    lines = [
        json.dumps(
            {
                "custom_id": f"doc-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": _chat(
                    f"Summarize in one line: document {i} is about {TOPICS[i % len(TOPICS)]}.",
                    max_tokens,
                    False,
                ),
            }
        )
        for i in range(size)
    ]
    files = {"file": ("docs.jsonl", "\n".join(lines).encode(), "application/jsonl")}
    uploaded = http.post("/v1/files", files=files, data={"purpose": "batch"})
    uploaded.raise_for_status()
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"}
    created = http.post("/v1/batches", json=body)
    created.raise_for_status()
    batch_id: str = created.json()["id"]
    return batch_id


def answered(http: httpx.Client, batch_id: str) -> int:
    counts = http.get(f"/v1/batches/{batch_id}").json()["request_counts"]
    return int(counts["completed"]) + int(counts["failed"])


def rate(http: httpx.Client, batch_id: str, seconds: float) -> float:
    """The batch's answered requests per second over the next `seconds`."""
    before, started = answered(http, batch_id), time.monotonic()
    time.sleep(seconds)
    return (answered(http, batch_id) - before) / (time.monotonic() - started)


def one_run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cellar-bench-batch-") as tmp:
        work = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with (
            spawn_gateway(_config(work, port, args.share), work / "gateway.log", url),
            httpx.Client(base_url=url, timeout=120, trust_env=False) as http,
        ):
            interactive_ttfts(url, args.clients, 2, args.max_tokens)  # warm the slots
            idle = interactive_ttfts(url, args.clients, args.requests, args.max_tokens)
            batch_id = start_batch(http, args.batch, args.batch_max_tokens)
            while answered(http, batch_id) < SLOTS:
                time.sleep(0.2)
            alone = rate(http, batch_id, args.window)
            before, started = answered(http, batch_id), time.monotonic()
            beside = interactive_ttfts(url, args.clients, args.requests, args.max_tokens)
            during = (answered(http, batch_id) - before) / (time.monotonic() - started)
            time.sleep(GRACE_S + 1)
            after = rate(http, batch_id, args.window)
            left = args.batch - answered(http, batch_id)
            http.post(f"/v1/batches/{batch_id}/cancel")
    if left <= 0:
        raise SystemExit("the batch finished before the run did: give a larger --batch")
    return {
        "ttft_idle_ms": 1000 * statistics.median(idle),
        "ttft_batch_ms": 1000 * statistics.median(beside),
        "ratio": statistics.median(beside) / statistics.median(idle),
        "batch_alone_rps": alone,
        "batch_during_rps": during,
        "batch_after_rps": after,
    }


COLUMNS = (
    ("ttft_idle_ms", "TTFT p50, no batch (ms)"),
    ("ttft_batch_ms", "TTFT p50, batch running (ms)"),
    ("ratio", "ratio (target <= 1.5)"),
    ("batch_alone_rps", "batch req/s, alone"),
    ("batch_during_rps", "batch req/s, with interactive"),
    ("batch_after_rps", "batch req/s, after"),
)


def table(runs: list[dict[str, float]]) -> list[str]:
    head = "| figure | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |"
    rows = [head, "|" + "---|" * (len(runs) + 2)]
    for key, label in COLUMNS:
        values = [run[key] for run in runs]
        cells = [f"{v:.2f}" for v in [*values, statistics.median(values)]]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10, help="per interactive client")
    parser.add_argument("--max-tokens", type=int, default=32, help="per interactive answer")
    parser.add_argument("--batch", type=int, default=3000, help="requests in the batch")
    parser.add_argument("--batch-max-tokens", type=int, default=24)
    parser.add_argument("--window", type=float, default=20.0, help="seconds a rate is measured")
    parser.add_argument(
        "--share", type=float, default=0.125, help="batches.background_share of the gateway"
    )
    args = parser.parse_args(argv)
    runs: list[dict[str, float]] = []
    for index in range(args.runs):
        runs.append(one_run(args))
        print(f"run {index + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()))
    print()
    print("\n".join(table(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
