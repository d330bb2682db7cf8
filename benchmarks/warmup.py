"""Does warm-up spare the first user the slow request? Warm-up on vs off, in one run.

    python -m cellar.benchmarks.warmup [--rounds 3]

For each setting, a fresh gateway preloads the bundled model (with or without warm-up), then
one client sends a first request and `steady` more, each with its own prompt (no shared prefix
beyond BOS). Prints the first request's time to first token next to the median of the rest,
and their ratio (the goal with warm-up on: within 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

from cellar.benchmarks.gateway import bundled_gguf, spawn_gateway
from cellar.engines.process import free_port
from cellar.engines.warmup import time_to_first_token

PROMPTS = [
    "The river",
    "A letter from",
    "In the morning",
    "Our garden",
    "The train left",
    "Old maps show",
    "Winter came",
]


def _config(model: Path, warm: bool, port: int, work: Path) -> Path:
    config = {
        "server": {"port": port, "log_level": "warning"},
        "store": {"path": str(work / "store")},
        "models": [
            {
                "name": "m",
                "source": str(model),
                "preload": True,
                "warmup": {"enabled": warm},
                "llamacpp": {"n_ctx": 2048},
            }
        ],
    }
    path = work / f"cellar-{warm}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _first_and_steady(base_url: str, steady: int) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        ttfts = [
            await time_to_first_token(client, "m", prompt, 8) for prompt in PROMPTS[: steady + 1]
        ]
    return ttfts[0], statistics.median(ttfts[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled GGUF")
    parser.add_argument("--rounds", type=int, default=3, help="fresh gateways per setting")
    parser.add_argument("--steady", type=int, default=5, help="requests after the first")
    args = parser.parse_args(argv)
    args.model = args.model or bundled_gguf()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cellar-warmup-") as tmp:
        work = Path(tmp)
        for warm in (True, False):
            firsts, steadies = [], []
            for _ in range(args.rounds):
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                config = _config(args.model, warm, port, work)
                with spawn_gateway(config, work / "gateway.log", base):
                    first, steady = asyncio.run(_first_and_steady(base, args.steady))
                firsts.append(first)
                steadies.append(steady)
            rows.append((warm, statistics.median(firsts), statistics.median(steadies)))
    print("warm-up | first request TTFT | steady TTFT (median) | ratio")
    print("--------|------------------:|---------------------:|------:")
    for warm, first, steady in rows:
        print(
            f"{'on' if warm else 'off':7s} | {first * 1000:14.0f} ms | {steady * 1000:17.0f} ms | "
            f"{first / steady:4.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
