"""Backpressure per model: at most `max_concurrency` requests served, `max_queue` waiting.

Waiting is by priority (lower first, vLLM's sense of the word), then first come first served.
A request beyond the queue gets 429 with Retry-After at once, so a burst on one model never
stalls the others. A waiting request that is cancelled (its client went away) leaves the queue.

Requests with a priority above 0 are background work (batches, or callers that asked for it):
they take any free slot while nobody else needs one, but while interactive requests (priority 0
or below) run, wait, or ran within the last `grace_s`, background work holds at most
`background_share` of the slots (rounded down, at least one unless the share is 0), so an
interactive request finds a slot free. Running requests
are never stopped; background and interactive waiters are bounded by `max_queue` each.

With `separate_groups`, requests of different groups (LoRA adapters) never run at the same time:
a request runs only beside requests of its own group, so an engine that cannot batch adapters
together (vLLM's CPU build) never sees them mixed. The line stays in order: when the group at
its head differs from the running one, it waits for the running requests to finish.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from dataclasses import dataclass, field

from cellar.errors import Overloaded


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    turn: asyncio.Future[None] = field(compare=False)
    group: str | None = field(compare=False)

    @property
    def background(self) -> bool:
        return self.priority > 0


class Admission:
    def __init__(
        self,
        model: str,
        max_concurrency: int,
        max_queue: int,
        separate_groups: bool = False,
        *,
        background_share: float = 0.125,
        grace_s: float = 5.0,
    ) -> None:
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.separate_groups = separate_groups
        self.background_slots = (
            max(1, math.floor(background_share * max_concurrency)) if background_share else 0
        )
        """Slots background work may hold while interactive requests are about."""
        self.grace_s = grace_s
        self.running = 0
        self.background_running = 0
        self.group: str | None = None
        """The group of the running requests (with separate_groups)."""
        self.group_switches = 0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._interactive_left = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def background_waiting(self) -> int:
        return sum(w.background for w in self._waiters)

    def _interactive_about(self) -> bool:
        return (
            self.running > self.background_running
            or any(not w.background for w in self._waiters)
            or time.monotonic() - self._interactive_left < self.grace_s
        )

    def _fits(self, waiter: _Waiter) -> bool:
        if self.running >= self.max_concurrency:
            return False
        if self.separate_groups and self.running and waiter.group != self.group:
            return False
        if waiter.background and self.background_running >= self.background_slots:
            return not self._interactive_about()
        return True

    def _start(self, waiter: _Waiter) -> None:
        if self.separate_groups and self.running == 0 and waiter.group != self.group:
            self.group_switches += 1
            self.group = waiter.group
        self.running += 1
        self.background_running += waiter.background

    async def enter(self, group: str | None = None, priority: int = 0) -> None:
        """Take a turn, waiting in line if needed; Overloaded when the line is full. Leave with
        the same priority."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(priority, next(self._seq), turn, group)
        if not any(w.priority <= priority for w in self._waiters) and self._fits(waiter):
            self._start(waiter)  # nobody before it in line
            return
        if sum(w.background == waiter.background for w in self._waiters) >= self.max_queue:
            raise Overloaded(
                f"model {self.model!r} is busy: {self.running} requests running and "
                f"{len(self._waiters)} waiting (max_queue {self.max_queue}); retry shortly",
                retry_after_s=1,
            )
        bisect.insort(self._waiters, waiter)
        self._hand_over()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave(priority)  # the turn was granted as we left: pass it on
            else:
                if waiter in self._waiters:  # (a hand-over may have passed it, cancelled, by)
                    self._waiters.remove(waiter)
                self._hand_over()  # the head may have changed group
            raise

    def leave(self, priority: int = 0) -> None:
        self.running -= 1
        if priority > 0:
            self.background_running -= 1
        else:
            self._interactive_left = time.monotonic()
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self._fits(self._waiters[0]):
            waiter = self._waiters.pop(0)
            if not waiter.turn.done():
                self._start(waiter)
                waiter.turn.set_result(None)
        if self._waiters and self._waiters[0].background and self._timer is None:
            # background work held back only by the grace period must not wait for an event
            wait = self._interactive_left + self.grace_s - time.monotonic()
            if wait > 0:
                self._timer = asyncio.get_running_loop().call_later(wait + 0.01, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._hand_over()
