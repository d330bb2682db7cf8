"""A call that blocks the gateway's event loop is caught in the act: its stack is written while
the loop is stuck, and the stall is logged and counted once the loop turns again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cellar.server.loopwatch import LoopWatch


def _block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a synchronous call in a handler does to every other request


async def _run(watch: LoopWatch, block_s: float) -> None:
    watch.start()
    try:
        await asyncio.sleep(0.2)
        if block_s:
            _block_the_loop(block_s)
        await asyncio.sleep(0.2)
    finally:
        watch.stop()


def test_a_blocked_loop_is_caught_where_it_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stalls: list[float] = []
    with (tmp_path / "stderr").open("w+") as stacks:
        watch = LoopWatch(stalls.append, stall_s=1.0, interval_s=0.05, stacks_to=stacks)
        asyncio.run(_run(watch, block_s=2.0))
        stacks.seek(0)
        written = stacks.read()
    assert "_block_the_loop" in written, written
    assert [s for s in stalls if 1.9 < s < 4], stalls  # the block; a busy machine may add none
    assert "the event loop did not run for" in caplog.text


def test_a_turning_loop_is_left_alone(tmp_path: Path) -> None:
    stalls: list[float] = []
    with (tmp_path / "stderr").open("w+") as stacks:
        watch = LoopWatch(stalls.append, stall_s=1.0, interval_s=0.05, stacks_to=stacks)
        asyncio.run(_run(watch, block_s=0))
        time.sleep(1.2)  # past the stall time: a stopped watch writes nothing either
        stacks.seek(0)
        assert stacks.read() == ""
    assert stalls == []
