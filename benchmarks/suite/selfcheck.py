"""The generator's own cost, measured against the echo endpoint (benchmarks/suite/echo.py).

- Added TTFT: p50 and p99 of the TTFT it measures at concurrency 1 against a server that
  answers at once; that is an upper bound on what it adds to any server's TTFT.
- Capacity: the most completed requests/s it drives in closed loop (concurrency 16, 64, 256).
- Rate accuracy: achieved / offered rate with Poisson arrivals at half that capacity, and the
  TTFT measured under that load (what the generator adds when it is busy).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cellar.benchmarks.suite.client import Client
from cellar.benchmarks.suite.record import Level, SelfCheck
from cellar.benchmarks.suite.runner import LevelPlan, run_level
from cellar.benchmarks.suite.workload import Prompt, Workload
from cellar.child import python_module
from cellar.engines.process import free_port

ECHO_TOKENS = 16
_START_TIMEOUT_S = 30


@contextmanager
def echo_endpoint(fail_after: int | None = None) -> Iterator[str]:
    """The echo endpoint in its own process (so it does not share the generator's CPU time);
    yields its base URL."""
    port = free_port()
    argv = python_module("cellar.benchmarks.suite.echo", "--port", str(port))
    if fail_after is not None:
        argv += ["--fail-after", str(fail_after)]
    process = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the echo endpoint exited with code {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the echo endpoint did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _workload() -> Workload:
    return Workload([Prompt("ping", None, ECHO_TOKENS)], seed=0)


async def _level(client: Client, plan: LevelPlan) -> Level:
    level = plan.level()
    await run_level(client, _workload(), plan, level)
    assert level.metrics is not None
    if level.metrics.failed:
        raise RuntimeError(f"the echo endpoint failed requests: {level.metrics.errors}")
    return level


async def measure(base_url: str, quick: bool = False) -> SelfCheck:
    """Self-check figures against an echo endpoint at `base_url`."""
    seconds = 1.0 if quick else 3.0
    async with Client(base_url, "echo", "completions") as client:
        await _level(client, LevelPlan("concurrency", 4, 50, None))  # connections, caches
        single = await _level(client, LevelPlan("concurrency", 1, 100 if quick else 400, None))
        best_rate, best_concurrency = 0.0, 1
        for concurrency in (16, 64) if quick else (16, 64, 256):
            level = await _level(client, LevelPlan("concurrency", concurrency, None, seconds))
            assert level.metrics is not None
            if level.metrics.request_throughput > best_rate:
                best_rate = level.metrics.request_throughput
                best_concurrency = concurrency
        offered = best_rate / 2
        paced = await _level(client, LevelPlan("rate", offered, None, seconds))
    assert single.metrics is not None and paced.metrics is not None
    assert single.metrics.ttft_ms.median is not None and single.metrics.ttft_ms.p99 is not None
    return SelfCheck(
        ttft_p50_ms=single.metrics.ttft_ms.median,
        ttft_p99_ms=single.metrics.ttft_ms.p99,
        max_request_rate=best_rate,
        concurrency_at_max=best_concurrency,
        rate_accuracy=paced.metrics.request_throughput / offered if offered else None,
        paced_rate=offered,
        paced_ttft_p50_ms=paced.metrics.ttft_ms.median,
        paced_ttft_p99_ms=paced.metrics.ttft_ms.p99,
    )
