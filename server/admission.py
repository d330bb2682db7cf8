"""Backpressure per model: at most `max_concurrency` requests served, `max_queue` waiting.

Waiting is FIFO. A request beyond the queue gets 429 with Retry-After at once, so a burst on one
model never stalls the others. A waiting request that is cancelled (its client went away) leaves
the queue.

With `separate_groups`, requests of different groups (LoRA adapters) never run at the same time:
a request runs only beside requests of its own group, so an engine that cannot batch adapters
together (vLLM's CPU build) never sees them mixed. The line stays FIFO: when the group at its
head differs from the running one, it waits for the running requests to finish.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cellar.errors import Overloaded


class Admission:
    def __init__(
        self, model: str, max_concurrency: int, max_queue: int, separate_groups: bool = False
    ) -> None:
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.separate_groups = separate_groups
        self.running = 0
        self.group: str | None = None
        """The group of the running requests (with separate_groups)."""
        self.group_switches = 0
        self._waiters: deque[tuple[asyncio.Future[None], str | None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _fits(self, group: str | None) -> bool:
        if self.running >= self.max_concurrency:
            return False
        return not self.separate_groups or self.running == 0 or group == self.group

    def _start(self, group: str | None) -> None:
        if self.separate_groups and self.running == 0 and group != self.group:
            self.group_switches += 1
            self.group = group
        self.running += 1

    async def enter(self, group: str | None = None) -> None:
        """Take a turn, waiting in line if needed; Overloaded when the line is full."""
        if not self._waiters and self._fits(group):
            self._start(group)
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(
                f"model {self.model!r} is busy: {self.running} requests running and "
                f"{len(self._waiters)} waiting (max_queue {self.max_queue}); retry shortly",
                retry_after_s=1,
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((turn, group))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # the turn was granted as we left: pass it on
            else:
                self._waiters.remove((turn, group))
                self._hand_over()  # the head may have changed group
            raise

    def leave(self) -> None:
        self.running -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self._fits(self._waiters[0][1]):
            turn, group = self._waiters.popleft()
            if not turn.done():
                self._start(group)
                turn.set_result(None)
