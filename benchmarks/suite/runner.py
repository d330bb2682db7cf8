"""Driving load: closed loop at a fixed concurrency, or open loop with Poisson arrivals.

A level runs for a number of requests or a duration (requests already sent when the time is up
finish and count). Each finished request is appended to its level at once, so when the run is
cancelled (Ctrl-C) the level keeps what was measured and counts what was still in flight.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from cellar.benchmarks.suite.client import Client
from cellar.benchmarks.suite.metrics import summarize
from cellar.benchmarks.suite.record import Level, Mode, RequestResult
from cellar.benchmarks.suite.workload import Workload

OnResult = Callable[[Level, RequestResult], None]
Send = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class LevelPlan:
    mode: Mode
    value: float
    requests: int | None
    duration_s: float | None

    def level(self) -> Level:
        return Level(
            mode=self.mode, value=self.value, requests=self.requests, duration_s=self.duration_s
        )


def default_requests(mode: Mode, value: float) -> int:
    """Per level when neither a count nor a duration is given: four rounds of the concurrency,
    or about 30 s of arrivals; at least 16."""
    if mode == "concurrency":
        return max(16, 4 * int(value))
    return max(16, math.ceil(value * 30))


class _Budget:
    """Hands out the level's requests until the count or the deadline is reached."""

    def __init__(self, plan: LevelPlan, origin: float) -> None:
        self.issued = 0
        self._limit = plan.requests
        self._deadline = origin + plan.duration_s if plan.duration_s is not None else math.inf

    def take(self, at: float | None = None) -> bool:
        if self._limit is not None and self.issued >= self._limit:
            return False
        if (time.perf_counter() if at is None else at) >= self._deadline:
            return False
        self.issued += 1
        return True


async def run_level(
    client: Client,
    workload: Workload,
    plan: LevelPlan,
    level: Level,
    *,
    on_result: OnResult | None = None,
    slo_ms: dict[str, float] | None = None,
    max_concurrency: int | None = None,
    seed: int = 0,
) -> None:
    """Run one level into `level` (results and metrics), also when cancelled."""
    origin = time.perf_counter()
    budget = _Budget(plan, origin)

    async def one() -> None:
        result = await client.send(workload.next(), origin)
        level.results.append(result)
        if on_result is not None:
            on_result(level, result)

    try:
        if plan.mode == "concurrency":
            await _closed_loop(one, budget, int(plan.value))
        else:
            await _open_loop(one, budget, plan.value, max_concurrency, random.Random(seed))
    except asyncio.CancelledError:
        level.interrupted = True
        level.cancelled = budget.issued - len(level.results)
        raise
    finally:
        level.metrics = summarize(level.results, time.perf_counter() - origin, slo_ms)


async def _closed_loop(one: Send, budget: _Budget, concurrency: int) -> None:
    async def worker() -> None:
        while budget.take():
            await one()

    await _all(worker() for _ in range(max(1, concurrency)))


async def _open_loop(
    one: Send,
    budget: _Budget,
    rate: float,
    max_concurrency: int | None,
    rng: random.Random,
) -> None:
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def gated() -> None:
        if gate is None:
            await one()
            return
        async with gate:
            await one()

    tasks: list[asyncio.Task[None]] = []
    due = time.perf_counter()
    try:
        while budget.take(at=due):
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(gated()))
            due += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _all(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
