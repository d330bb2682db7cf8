"""One deployment's state machine in the gateway: what runs, since when, how it has failed.

stopped -> loading -> warming -> ready -> unloading -> stopped
loading | warming -> failed       the reason is kept; the next request retries, with backoff
ready -> failed                   the worker died or stopped answering health checks
failed -> loading                 a retry
ready -> ready                    a side-by-side switch to another version's worker
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cellar.config_types import parse_duration
from cellar.deployments import ResolvedDeployment
from cellar.engines.base import Engine, EngineState
from cellar.rollouts import CANDIDATE, CURRENT, bucket
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


EDGES: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.LOADING}),
    State.LOADING: frozenset({State.WARMING, State.READY, State.FAILED}),
    State.WARMING: frozenset({State.READY, State.FAILED}),
    # ready -> ready: a side-by-side switch moves the deployment to the new version's worker
    State.READY: frozenset({State.READY, State.UNLOADING, State.FAILED}),
    State.UNLOADING: frozenset({State.STOPPED}),
    State.FAILED: frozenset({State.LOADING}),
}
"""The README's state diagram: every transition a deployment may make."""


@dataclass
class Candidate:
    """Another version served beside the deployment's own during a guarded rollout
    (server/guarded.py): callers whose bucket (cellar.rollouts.bucket) is under `share` go to
    it; of the others, `shadow` percent are also sent to it, their answers discarded."""

    resolved: ResolvedDeployment
    engine: Engine
    salt: str
    share: float = 0.0
    shadow: float = 0.0

    def takes(self, sticky: str) -> bool:
        return self.share > 0 and bucket(self.salt, sticky) < self.share

    def mirrors(self, sticky: str) -> bool:
        return self.shadow > 0 and bucket(self.salt + "/shadow", sticky) < self.shadow


class IllegalTransition(RuntimeError):
    """A bug: the gateway tried a transition the state diagram does not have."""


@dataclass
class Deployment:
    """One deployment's state machine. Every change of its state, its engine and its failure
    record goes through a method here, which checks the transition against EDGES, tells
    `on_state` (the metrics) and wakes whoever waits in `wait_until`. Methods are called from
    the event loop only; none of them blocks."""

    resolved: ResolvedDeployment
    admission: Admission
    estimate_bytes: int
    keep_alive_s: float
    context_window: int | None = None
    """Prompt + completion tokens one request may use, when known before tokenizing."""
    gpu_claims: dict[int, float] = field(default_factory=dict)
    """Share of each GPU (by index) the worker reserves while loaded."""
    on_state: Callable[[Deployment], None] = lambda _: None
    """Called after every transition."""
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
    candidate: Candidate | None = None
    """The version a guarded rollout is trying beside this one."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    # -- transitions -----------------------------------------------------------------------

    def _to(self, state: State) -> None:
        if state not in EDGES[self.state]:
            raise IllegalTransition(f"model {self.name!r}: {self.state} -> {state}")
        self.state = state
        self.on_state(self)
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, check: Callable[[], bool]) -> None:
        """Until `check()` holds, re-checked after every transition and released lease."""
        while not check():
            await self._changed.wait()

    def start_loading(self, load: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """stopped | failed -> loading, running `load` (unless a load already runs)."""
        if self.load_task is None or self.load_task.done():
            self._to(State.LOADING)  # visible before the task first runs
            self.error = None
            self.load_task = asyncio.create_task(load())

    def attach(self, engine: Engine) -> None:
        """The engine being loaded (it holds memory from now on)."""
        self.engine = engine

    def warming(self) -> None:
        self._to(State.WARMING)

    def loaded(self) -> None:
        """loading | warming -> ready (ready -> ready: a switch's new worker); idle from now
        on."""
        self.loaded_at = self.last_used = time.monotonic()
        self.health_misses, self.crashed = 0, False
        self._to(State.READY)

    def fail(self, reason: str, *, crashed: bool) -> Engine | None:
        """-> failed: could not load, or (`crashed`) its running worker died. Returns the
        engine, detached, for the caller to stop."""
        engine, self.engine = self.engine, None
        self.restarts += int(crashed)
        self.crashed = crashed
        self.failures += 1
        self.error = reason
        self.retry_at = time.monotonic() + self.backoff_s()
        self.loaded_at = None
        self._to(State.FAILED)
        return engine

    def unloading(self) -> Engine | None:
        """ready -> unloading; returns the engine to stop, then call `stopped`."""
        self._to(State.UNLOADING)
        return self.engine

    def stopped(self) -> None:
        """unloading -> stopped: its worker is gone."""
        self.engine, self.loaded_at = None, None
        self._to(State.STOPPED)

    def clear_failures(self) -> None:
        """Forget earlier failures and their backoff (an operator's load, or stable running)."""
        self.failures, self.retry_at = 0, 0.0

    def probed(self, healthy: bool) -> int:
        """Record one health probe; the misses in a row."""
        self.health_misses = 0 if healthy else self.health_misses + 1
        return self.health_misses

    def adopt(
        self,
        resolved: ResolvedDeployment,
        estimate_bytes: int,
        context_window: int | None,
        gpu_claims: dict[int, float],
        engine: Engine | None = None,
    ) -> None:
        """Make `resolved` this deployment's version; with `engine` (started and warm), ready
        -> ready on it: new requests go to it from now on."""
        self.resolved, self.estimate_bytes = resolved, estimate_bytes
        self.context_window, self.gpu_claims = context_window, gpu_claims
        self.clear_failures()
        self.error, self.skip_sha256 = None, None
        if engine is not None:
            self.engine = engine
            self.loaded()

    # -- switches (server.rollout) ---------------------------------------------------------

    def begin_switch(self, record: dict[str, Any]) -> None:
        self.last_switch, self.switching = record, True

    def reserve(self, extra_bytes: int, extra_claims: dict[int, float]) -> None:
        """Count memory held beside the engine while a switch runs two versions."""
        self.extra_bytes, self.extra_claims = extra_bytes, extra_claims

    def end_switch(self) -> None:
        self.switching = False
        self.reserve(0, {})

    def skip(self, sha256: str | None) -> None:
        """Do not switch to this version again until its tag moves (None: forget)."""
        self.skip_sha256 = sha256

    def pause(self) -> None:
        """New requests wait (a switch with no room for both versions)."""
        self.paused = asyncio.Event()

    def resume(self) -> None:
        if self.paused is not None:
            self.paused.set()
            self.paused = None

    async def drained(self, engine: Engine, timeout_s: float) -> bool:
        """Whether every request on `engine` finished within `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.wait_until(lambda: not self.serving(engine))
        return not self.serving(engine)

    # -- views -----------------------------------------------------------------------------

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

    def lease(self, engine: Engine, sticky: str | None = None, priority: int = 0) -> Lease:
        """A turn on `engine` (counted until released, so a switch knows when it drained);
        during a guarded rollout, on the candidate's engine instead when `sticky` falls in its
        share."""
        resolved, arm, shadow = self.resolved, None, False
        candidate = self.candidate
        if candidate is not None and sticky is not None:
            arm = CURRENT
            if candidate.takes(sticky) and candidate.engine.state is EngineState.READY:
                engine, resolved, arm = candidate.engine, candidate.resolved, CANDIDATE
            else:
                shadow = candidate.mirrors(sticky)
        self.inflight[id(engine)] = self.inflight.get(id(engine), 0) + 1
        self.last_used = time.monotonic()
        return Lease(self, engine, resolved, arm, shadow, priority)

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
            "cpus": spec.cpus,
            "address": (
                self.engine.channel.address
                if self.engine is not None and self.holds_memory
                else None
            ),
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
    arm: str | None = None
    """During a guarded rollout: which version (cellar.rollouts CURRENT or CANDIDATE)."""
    shadow: bool = False
    """Also send this request to the rollout's candidate (shadow mode)."""
    priority: int = 0
    """Its place in the admission queue (above 0: background work)."""

    def release(self) -> None:
        deployment = self.deployment
        deployment.last_used = time.monotonic()
        key = id(self.engine)
        deployment.inflight[key] = deployment.inflight.get(key, 1) - 1
        if deployment.inflight[key] <= 0:
            del deployment.inflight[key]
        deployment.admission.leave(self.priority)
        deployment._wake()  # a switch may be waiting for the engine to drain


@dataclass(frozen=True)
class Limits:
    budget_bytes: int
    keep_alive_s: float
    load_timeout_s: float
    drain_timeout_s: float = 600.0
    """How long a switch waits for requests on the old version before stopping it."""
    background_share: float = 0.125
    """The share of a model's slots background work holds while interactive requests are
    about (server/admission.py)."""
    interactive_grace_s: float = 5.0
