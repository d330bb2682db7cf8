"""Per-model backpressure, on its own (no model needed)."""

from __future__ import annotations

import asyncio

import pytest

from cellar.errors import Overloaded
from server.admission import Admission


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
