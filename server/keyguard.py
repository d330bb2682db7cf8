"""Bounds on the scrypt work that callers can make the gateway do.

Every key that is not already known good costs one scrypt (16 MiB, ~50 ms): a wrong secret, an
unknown id and a malformed key alike, so the time of a refusal says nothing about which ids
exist. That cost is bounded three ways: at most CONCURRENT hashes run at once; at most WAITING
more wait for one (beyond, 429 at once); and a client (its address, as the trusted proxies
report it) that has failed MAX_FAILURES times within WINDOW_S gets 429 without any hashing
until its failures age out.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from cellar.errors import Overloaded

CONCURRENT = 2
WAITING = 32
MAX_FAILURES = 10
WINDOW_S = 60.0
MAX_CLIENTS = 10_000
"""Clients whose failures are remembered (the oldest are forgotten first)."""


class KeyGuard:
    def __init__(
        self,
        *,
        concurrent: int = CONCURRENT,
        waiting: int = WAITING,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._waiting_cap = concurrent + waiting
        self._inside = 0
        self._max_failures = max_failures
        self._window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def admit(self, client: str | None) -> None:
        """429 for a client that failed too often lately."""
        seen = self._recent(client)
        if seen is not None and len(seen) >= self._max_failures:
            retry = math.ceil(seen[0] + self._window_s - self._clock())
            raise Overloaded(
                "Too many failed API keys from this client; try again later.",
                retry_after_s=max(retry, 1),
            )

    async def check(self, check: Callable[[], bool]) -> bool:
        """Run one slow key check in a worker thread, within the bounds."""
        if self._inside >= self._waiting_cap:
            raise Overloaded("Too many API key checks at once; try again shortly.")
        self._inside += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(check)
        finally:
            self._inside -= 1

    def failed(self, client: str | None) -> None:
        if client is None:
            return
        seen = self._recent(client)
        if seen is None:
            seen = self._failures[client] = deque(maxlen=self._max_failures)
            while len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)
        self._failures.move_to_end(client)
        seen.append(self._clock())

    def _recent(self, client: str | None) -> deque[float] | None:
        """The client's failures within the window (older ones dropped)."""
        if client is None or client not in self._failures:
            return None
        seen, horizon = self._failures[client], self._clock() - self._window_s
        while seen and seen[0] <= horizon:
            seen.popleft()
        return seen
