"""The deployment's state machine refuses transitions its diagram does not have."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellar.server.admission import Admission
from cellar.server.deployment import EDGES, Deployment, IllegalTransition, State
from tests.standin import resolved


def _deployment(tmp_path: Path, seen: list[State]) -> Deployment:
    return Deployment(
        resolved("m", tmp_path),
        Admission("m", 1, 1),
        estimate_bytes=1,
        keep_alive_s=-1,
        on_state=lambda d: seen.append(d.state),
    )


def test_every_state_can_be_left_and_reached() -> None:
    reached = {target for targets in EDGES.values() for target in targets}
    assert set(EDGES) == set(State) and reached == set(State)


def test_a_transition_off_the_diagram_is_refused(tmp_path: Path) -> None:
    seen: list[State] = []
    deployment = _deployment(tmp_path, seen)
    with pytest.raises(IllegalTransition, match="stopped -> ready"):
        deployment.loaded()
    with pytest.raises(IllegalTransition, match="stopped -> unloading"):
        deployment.unloading()
    assert deployment.state is State.STOPPED and seen == []


def test_waiters_wake_on_each_transition(tmp_path: Path) -> None:
    async def scenario() -> list[State]:
        seen: list[State] = []
        deployment = _deployment(tmp_path, seen)
        waiter = asyncio.create_task(deployment.wait_until(lambda: deployment.state is State.READY))
        deployment.start_loading(lambda: asyncio.sleep(0))
        await asyncio.sleep(0)
        assert not waiter.done()
        deployment.warming()
        deployment.loaded()
        await asyncio.wait_for(waiter, 1)
        return seen

    assert asyncio.run(scenario()) == [State.LOADING, State.WARMING, State.READY]
