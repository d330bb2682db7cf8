"""GPU memory shares in the supervisor: vLLM reserves `gpu_memory_utilization` of each GPU it
runs on, so two models may share a GPU only while their shares fit. No GPU runs here: the
engines are stand-ins that start at once; the supervisor, its budget and eviction are real."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cellar.config import ModelDeployment
from cellar.deployments import Artifact, ResolvedDeployment
from cellar.engines.base import EngineState
from cellar.engines.channel import Channel
from cellar.errors import EngineUnavailable
from cellar.protocol import CompletionBody, EmbeddingRequest
from cellar.server.deployment import Limits, State
from cellar.server.metrics import Metrics
from cellar.server.supervisor import Supervisor
from cellar.store import ModelStore


class StandIn:
    """An engine that is ready at once and holds nothing (a GPU worker cannot run here)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = EngineState.STOPPED
        self.error: str | None = None
        self.pid: int | None = None
        self.channel = Channel.tcp(9, proves=False)

    async def start(self) -> None:
        self.state = EngineState.STARTING

    async def wait_ready(self, timeout_s: float) -> None:
        self.state = EngineState.READY

    async def health(self) -> bool:
        return self.state is EngineState.READY

    async def stop(self) -> None:
        self.state = EngineState.STOPPED

    def prepare(self, path: str, request: CompletionBody | EmbeddingRequest) -> dict[str, Any]:
        return request.model_dump(exclude_unset=True, by_alias=True)

    def rewriter(self, request: CompletionBody) -> None:
        return None

    async def load(self) -> tuple[int, int] | None:
        return 0, 0


SHARES = {"a": {0: 0.5}, "b": {0: 0.4}, "c": {0: 0.3, 1: 0.3}, "d": {1: 0.9}}


def _supervisor(tmp_path: Path) -> Supervisor:
    resolved = []
    for name in SHARES:
        spec = ModelDeployment(
            name=name, source=str(tmp_path), engine="vllm", warmup={"enabled": False}
        )
        resolved.append(
            ResolvedDeployment(spec, "vllm", "test", Artifact(tmp_path, "hf", None), None)
        )
    supervisor = Supervisor(
        resolved,
        ModelStore(tmp_path / "store"),
        lambda d: StandIn(d.spec.name),
        lambda d: 1,
        Limits(budget_bytes=10**12, keep_alive_s=-1, load_timeout_s=5),
        Metrics(),
    )
    for name, shares in SHARES.items():
        supervisor.get(name).gpu_claims = shares
    return supervisor


def _loaded(supervisor: Supervisor) -> set[str]:
    return {name for name in SHARES if supervisor.get(name).state is State.READY}


def test_models_share_a_gpu_while_their_shares_fit(tmp_path: Path) -> None:
    async def scenario() -> None:
        supervisor = _supervisor(tmp_path)
        await supervisor.load("a")
        await supervisor.load("b")
        assert _loaded(supervisor) == {"a", "b"}  # 0.5 + 0.4 of GPU 0
        await supervisor.load("c")  # needs 0.3 of GPU 0: the least recently used goes
        assert _loaded(supervisor) == {"b", "c"}
        await supervisor.load("d")  # GPU 1: 0.3 + 0.9 > 1, so c goes; b (GPU 0 only) stays
        assert _loaded(supervisor) == {"b", "d"}

    asyncio.run(scenario())


def test_a_busy_gpu_is_a_clear_503(tmp_path: Path) -> None:
    async def scenario() -> None:
        supervisor = _supervisor(tmp_path)
        await supervisor.load("d")
        supervisor.get("d").admission.running = 1  # serving a request: not evictable
        with pytest.raises(EngineUnavailable, match=r"30% of GPU 1 .* 90% of it is taken"):
            await supervisor.acquire("c")

    asyncio.run(scenario())
