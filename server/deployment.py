"""One deployment's state in the gateway: what runs, since when, and how it has failed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cellar.config_types import parse_duration
from cellar.deployments import ResolvedDeployment
from cellar.engines.base import Engine
from cellar.server.admission import Admission

MAX_CONSECUTIVE_FAILURES = 5
"""After this many failed loads in a row, only an explicit load (admin API) retries."""


class State(StrEnum):
    STOPPED = "stopped"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass
class Deployment:
    resolved: ResolvedDeployment
    admission: Admission
    estimate_bytes: int
    keep_alive_s: float
    context_window: int | None = None
    """Prompt + completion tokens one request may use, when known before tokenizing."""
    gpu_claims: dict[int, float] = field(default_factory=dict)
    """Share of each GPU (by index) the worker reserves while loaded."""
    state: State = State.STOPPED
    engine: Engine | None = None
    error: str | None = None
    loaded_at: float | None = None
    last_used: float = field(default_factory=time.monotonic)
    restarts: int = 0
    failures: int = 0
    retry_at: float = 0.0
    load_task: asyncio.Task[None] | None = None
    health_misses: int = 0
    crashed: bool = False
    """Failed because a running worker died (not because it could not load)."""
    inflight: dict[int, int] = field(default_factory=dict)
    """Requests holding a lease, by id() of the engine serving them."""
    switching: bool = False
    """A switch to another version is under way (see server.rollout)."""
    switch_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    paused: asyncio.Event | None = None
    """Set while new requests wait for a switch that cannot run both versions at once."""
    extra_bytes: int = 0
    """Memory held beside the engine during a switch (the new version warming, or the old
    one draining)."""
    extra_claims: dict[int, float] = field(default_factory=dict)
    last_switch: dict[str, Any] | None = None
    skip_sha256: str | None = None
    """A version that failed to switch in; not retried until the tag moves again."""

    @property
    def name(self) -> str:
        return self.resolved.spec.name

    @property
    def busy(self) -> bool:
        return self.admission.running > 0 or self.admission.waiting > 0

    @property
    def holds_memory(self) -> bool:
        return self.state in (State.LOADING, State.WARMING, State.READY, State.UNLOADING)

    @property
    def held_bytes(self) -> int:
        return (self.estimate_bytes if self.holds_memory else 0) + self.extra_bytes

    def held_share(self, device: int) -> float:
        own = self.gpu_claims.get(device, 0.0) if self.holds_memory else 0.0
        return own + self.extra_claims.get(device, 0.0)

    def lease(self, engine: Engine) -> Lease:
        """A turn on `engine` (counted until released, so a switch knows when it drained)."""
        self.inflight[id(engine)] = self.inflight.get(id(engine), 0) + 1
        self.last_used = time.monotonic()
        return Lease(self, engine, self.resolved)

    def serving(self, engine: Engine) -> int:
        return self.inflight.get(id(engine), 0)

    def backoff_s(self) -> float:
        """0 after the first failure (restart at once), then 1, 2, 4 ... 60 s."""
        if self.failures <= 1:
            return 0.0
        return float(min(2 ** (self.failures - 2), 60))

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        spec = self.resolved.spec
        return {
            "name": self.name,
            "state": self.state.value,
            "engine": self.resolved.engine,
            "pid": self.engine.pid if self.engine is not None and self.holds_memory else None,
            "url": self.engine.base_url if self.engine is not None and self.holds_memory else None,
            "memory_estimate_bytes": self.estimate_bytes,
            "gpu_claims": {str(device): share for device, share in self.gpu_claims.items()},
            "uptime_s": round(now - self.loaded_at, 1) if self.loaded_at else None,
            "idle_s": round(now - self.last_used, 1),
            "keep_alive_s": self.keep_alive_s,
            "running": self.admission.running,
            "waiting": self.admission.waiting,
            "restarts": self.restarts,
            "error": self.error,
            "source": spec.source,
            "version": self.resolved.version_label,
            "path": str(self.resolved.path),
            "sha256": self.resolved.manifest.sha256 if self.resolved.manifest else None,
            "switching": self.switching,
            "last_switch": self.last_switch,
        }


def keep_alive_of(resolved: ResolvedDeployment, default_s: float) -> float:
    value = resolved.spec.keep_alive
    return default_s if value is None else parse_duration(value)


@dataclass
class Lease:
    """A request's turn on a ready engine; release it when the answer is complete."""

    deployment: Deployment
    engine: Engine
    resolved: ResolvedDeployment
    """The version the engine serves (a switch may have moved the deployment on since)."""

    def release(self) -> None:
        deployment = self.deployment
        deployment.last_used = time.monotonic()
        key = id(self.engine)
        deployment.inflight[key] = deployment.inflight.get(key, 1) - 1
        if deployment.inflight[key] <= 0:
            del deployment.inflight[key]
        deployment.admission.leave()


@dataclass(frozen=True)
class Limits:
    budget_bytes: int
    keep_alive_s: float
    load_timeout_s: float
    drain_timeout_s: float = 600.0
    """How long a switch waits for requests on the old version before stopping it."""
