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


def test_background_work_takes_only_the_slots_interactive_requests_leave() -> None:
    async def scenario() -> None:
        gate = Admission("m", max_concurrency=4, max_queue=8, background_share=0.25, grace_s=0)
        await gate.enter(priority=0)  # someone is chatting
        batch = [asyncio.create_task(gate.enter(priority=10)) for _ in range(3)]
        await asyncio.sleep(0)
        assert (gate.running, gate.background_running, gate.background_waiting) == (2, 1, 2)
        gate.leave(priority=0)  # the chat ends: background work takes every free slot
        await asyncio.gather(*batch)
        assert (gate.running, gate.background_running) == (3, 3)
        await gate.enter(priority=10)  # the last slot
        chat = asyncio.create_task(gate.enter(priority=0))
        later = asyncio.create_task(gate.enter(priority=10))
        await asyncio.sleep(0)
        assert not chat.done()  # running requests are never stopped ...
        gate.leave(priority=10)
        await asyncio.sleep(0)
        assert chat.done() and not later.done()  # ... but the next free slot is the chat's
        assert gate.max_queue == 8 and gate.waiting == 1

    asyncio.run(scenario())


def test_lower_priority_numbers_go_first_and_background_waits_out_the_grace() -> None:
    async def scenario() -> None:
        gate = Admission("m", max_concurrency=1, max_queue=8, background_share=0, grace_s=0.2)
        await gate.enter()
        order: list[str] = []

        async def take(name: str, priority: int) -> None:
            await gate.enter(priority=priority)
            order.append(name)
            gate.leave(priority)

        tasks = [
            asyncio.create_task(take(name, priority))
            for name, priority in (("batch", 10), ("normal", 0), ("urgent", -5), ("low", 3))
        ]
        await asyncio.sleep(0)
        gate.leave()
        await asyncio.sleep(0.05)
        assert order == ["urgent", "normal"]  # background waits while interactive is about
        await asyncio.wait_for(asyncio.gather(*tasks), 2)  # then the grace passes
        assert order == ["urgent", "normal", "low", "batch"]

    asyncio.run(scenario())


def test_background_waiters_do_not_fill_the_interactive_queue() -> None:
    async def scenario() -> None:
        gate = Admission("m", max_concurrency=1, max_queue=1, background_share=0, grace_s=60)
        await gate.enter()
        background = asyncio.create_task(gate.enter(priority=10))
        await asyncio.sleep(0)
        interactive = asyncio.create_task(gate.enter())  # its own line has room
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await gate.enter(priority=10)
        gate.leave()
        await interactive
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)

    asyncio.run(scenario())
