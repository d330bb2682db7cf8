"""Backpressure per model: at most `max_concurrency` requests served, `max_queue` waiting.

Waiting is FIFO. A request beyond the queue gets 429 with Retry-After at once, so a burst on one
model never stalls the others. A waiting request that is cancelled (its client went away) leaves
the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cellar.errors import Overloaded


class Admission:
    def __init__(self, model: str, max_concurrency: int, max_queue: int) -> None:
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self) -> None:
        """Take a turn, waiting in line if needed; Overloaded when the line is full."""
        if self.running < self.max_concurrency and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(
                f"model {self.model!r} is busy: {self.running} requests running and "
                f"{len(self._waiters)} waiting (max_queue {self.max_queue}); retry shortly",
                retry_after_s=1,
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # the turn was granted as we left: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def leave(self) -> None:
        self.running -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self.running < self.max_concurrency:
            turn = self._waiters.popleft()
            if not turn.done():
                self.running += 1
                turn.set_result(None)
