"""Per-model backpressure, on its own (no model needed)."""

from __future__ import annotations

import asyncio

import pytest

from cellar.errors import Overloaded
from cellar.server.admission import Admission


def test_turns_queue_and_overflow() -> None:
    async def scenario() -> None:
        gate = Admission("m", max_concurrency=1, max_queue=1)
        await gate.enter()
        waiter = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        assert (gate.running, gate.waiting) == (1, 1)
        with pytest.raises(Overloaded) as caught:
            await gate.enter()
        assert caught.value.headers() == {"Retry-After": "1"}
        gate.leave()
        await waiter
        assert (gate.running, gate.waiting) == (1, 0)
        gate.leave()
        assert gate.running == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_line() -> None:
    async def scenario() -> None:
        gate = Admission("m", max_concurrency=1, max_queue=2)
        await gate.enter()
        gone = asyncio.create_task(gate.enter())
        stays = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        gone.cancel()  # its client disconnected
        await asyncio.gather(gone, return_exceptions=True)
        assert gate.waiting == 1
        gate.leave()
        await stays
        assert (gate.running, gate.waiting) == (1, 0)

    asyncio.run(scenario())


def test_a_turn_granted_to_a_leaver_passes_on() -> None:
    async def scenario() -> None:
        gate = Admission("m", max_concurrency=1, max_queue=2)
        await gate.enter()
        first = asyncio.create_task(gate.enter())
        second = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        gate.leave()  # grants `first` its turn ...
        first.cancel()  # ... which leaves before using it
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.wait_for(second, 1)
        assert (gate.running, gate.waiting) == (1, 0)

    asyncio.run(scenario())


def test_separate_groups_never_run_together() -> None:
    """For an engine that cannot batch adapters together: a group runs alone, in FIFO order."""

    async def scenario() -> None:
        gate = Admission("m", max_concurrency=4, max_queue=8, separate_groups=True)
        await gate.enter("m")
        await gate.enter("m")
        adapter = asyncio.create_task(gate.enter("m:a"))
        behind = asyncio.create_task(gate.enter("m"))  # same group as running, but in line
        await asyncio.sleep(0)
        assert (gate.running, gate.waiting, gate.group) == (2, 2, "m")
        gate.leave()
        await asyncio.sleep(0)
        assert not adapter.done() and not behind.done()
        gate.leave()
        await adapter
        assert (gate.running, gate.group) == (1, "m:a")
        await asyncio.sleep(0)
        assert not behind.done()
        gate.leave()
        await behind
        assert (gate.running, gate.group, gate.group_switches) == (1, "m", 3)

    asyncio.run(scenario())


def test_groups_mix_freely_without_separation() -> None:
    async def scenario() -> None:
        gate = Admission("m", max_concurrency=4, max_queue=8)
        for group in ("m", "m:a", "m:b"):
            await gate.enter(group)
        assert gate.running == 3

    asyncio.run(scenario())
