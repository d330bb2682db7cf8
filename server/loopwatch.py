"""Notices when the gateway's event loop stops turning, and shows where it is stuck.

One asyncio loop serves every request, every stream and every worker's log pipe: a call that
blocks it (a synchronous read, a lock, a long computation in the loop's thread) stalls every
client at once. A callback on the loop beats every INTERVAL_S and re-arms `faulthandler`'s
timer; when the loop has not beaten for STALL_S, faulthandler's own C thread writes the stack
of every thread to stderr (it needs neither the loop nor the GIL, so it sees a stall in C
code too). When the loop turns again, the stall is logged with its length and counted in
`cellar:event_loop_stalls_total`.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("cellar.loop")

INTERVAL_S = 1.0
STALL_S = 10.0
"""Longer than anything the gateway does in its loop's thread on a busy 2-core machine."""


class LoopWatch:
    def __init__(
        self,
        on_stall: Callable[[float], None],
        stall_s: float | None = None,
        interval_s: float | None = None,
        stacks_to: TextIO | None = None,
    ) -> None:
        self._on_stall = on_stall
        self._stall_s = STALL_S if stall_s is None else stall_s
        self._interval_s = INTERVAL_S if interval_s is None else interval_s
        self._stacks_to = stacks_to or sys.stderr
        self._beat = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin beating on the running loop."""
        self._beat = time.monotonic()
        self._arm()

    def _arm(self) -> None:
        faulthandler.dump_traceback_later(self._stall_s, file=self._stacks_to)
        self._handle = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        silent = now - self._beat
        self._beat = now
        if silent >= self._stall_s:
            log.error(
                "the event loop did not run for %.1f s: every request waited (the stacks of "
                "its threads were written to stderr when it stalled)",
                silent,
            )
            self._on_stall(silent)
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        faulthandler.cancel_dump_traceback_later()
