"""Switching a serving deployment to another version of its model, failing no request.

A switch starts when the tag a deployment follows moves (`source: store:NAME@prod`, watched by
the supervisor) or when an operator asks (`POST /admin/models/{name}/reload`).

- **Side by side** (the memory budget, and every GPU share it claims, hold both versions, idle
  models evicted if need be): the new version's worker starts and warms up while the old one
  serves. Then new requests go to the new worker; requests already on the old one finish, and
  the old worker stops.
- **Queued** (no room for both): new requests wait in the gateway while the old version's
  requests finish; the old worker stops, the new one loads and warms up, and the waiting
  requests go to it. The log says so.

If the new version cannot load, the old one keeps (or goes back to) serving, the switch is
recorded as failed in `/admin/models`, and that version is not tried again until the tag
moves once more (or an operator reloads).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from cellar.deployments import ResolvedDeployment
from cellar.engines.base import Engine
from cellar.engines.kinds import kind_of
from cellar.errors import ApiError, EngineUnavailable
from cellar.server.deployment import Deployment, Limits, State

log = logging.getLogger("cellar.rollout")


class Host(Protocol):
    """What a switch needs from the supervisor that runs it (server.host.Supervisor):
    the memory budget, and loading a version the way any load does."""

    @property
    def limits(self) -> Limits: ...

    @property
    def budget_lock(self) -> asyncio.Lock:
        """Held while deciding what loads (and what is evicted) within the memory budget."""
        ...

    def estimate(self, resolved: ResolvedDeployment) -> int: ...

    async def make_room(
        self,
        deployment: Deployment,
        need: int | None = None,
        claims: dict[int, float] | None = None,
    ) -> None:
        """Evict idle models until `need` bytes and `claims` fit beside what runs, or raise
        EngineUnavailable saying what is missing."""
        ...

    async def verify(self, resolved: ResolvedDeployment) -> None: ...

    def launch(self, resolved: ResolvedDeployment) -> Engine: ...

    async def warm(
        self, engine: Engine, resolved: ResolvedDeployment, warming: Callable[[], None]
    ) -> None: ...

    def adopt(
        self, deployment: Deployment, resolved: ResolvedDeployment, engine: Engine | None = None
    ) -> None:
        """Make `resolved` the deployment's version (Deployment.adopt, sized for it)."""
        ...

    async def load_now(self, deployment: Deployment) -> bool:
        """Load the deployment's version and wait; whether it is ready."""
        ...


def _sha(resolved: ResolvedDeployment) -> str | None:
    return resolved.version.sha256 if resolved.version is not None else None


async def switch_version(
    host: Host, deployment: Deployment, new: ResolvedDeployment, why: str
) -> None:
    """Move `deployment` to `new` (see the module docstring); EngineUnavailable if it failed."""
    async with deployment.switch_lock:
        record: dict[str, object] = {
            "from": deployment.resolved.version_label,
            "to": new.version_label,
            "why": why,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "outcome": "running",
        }
        started = time.monotonic()
        log.info(
            "model %r: switching %s -> %s (%s)", deployment.name, record["from"], record["to"], why
        )
        deployment.begin_switch(record)
        try:
            record["mode"] = await _switch(host, deployment, new)
        except Exception as exc:
            reason = exc.message if isinstance(exc, ApiError) else str(exc)
            record.update(outcome="failed", error=reason)
            deployment.skip(_sha(new))
            log.error(
                "model %r: switching to %s failed, %s keeps serving: %s",
                deployment.name,
                new.version_label,
                deployment.resolved.version_label,
                reason,
            )
            raise EngineUnavailable(f"switching to {new.version_label} failed: {reason}") from None
        finally:
            deployment.end_switch()
        record.update(outcome="done", seconds=round(time.monotonic() - started, 1))
        log.info(
            "model %r: now serving %s (%s, %.1f s)",
            deployment.name,
            new.version_label,
            record["mode"],
            time.monotonic() - started,
        )


async def _switch(host: Host, deployment: Deployment, new: ResolvedDeployment) -> str:
    if deployment.load_task is not None and not deployment.load_task.done():
        await asyncio.wait({deployment.load_task})
    if deployment.state is not State.READY or deployment.engine is None:
        host.adopt(deployment, new)
        return "not loaded (the next request loads the new version)"
    need, claims = host.estimate(new), kind_of(new).gpu_claims(new)
    lacking: str | None = None
    async with host.budget_lock:
        try:
            await host.make_room(deployment, need, claims)
        except EngineUnavailable as exc:
            lacking = exc.message
        else:
            deployment.reserve(need, claims)
    if lacking is None:
        await _side_by_side(host, deployment, new)
        return "side by side"
    log.warning(
        "model %r: no room to run %s beside %s (%s); new requests queue in the gateway "
        "until the switch completes",
        deployment.name,
        new.version_label,
        deployment.resolved.version_label,
        lacking,
    )
    await _queued(host, deployment, new)
    return "queued (no room for both versions)"


async def _side_by_side(host: Host, deployment: Deployment, new: ResolvedDeployment) -> None:
    engine = await _started(host, new)
    await adopt_beside(host, deployment, new, engine)


async def _started(host: Host, new: ResolvedDeployment) -> Engine:
    await host.verify(new)
    engine = host.launch(new)
    try:
        await engine.start()
        await host.warm(engine, new, lambda: None)
    except BaseException:
        await engine.stop()
        raise
    return engine


async def start_beside(host: Host, deployment: Deployment, new: ResolvedDeployment) -> Engine:
    """A worker of `new`, started and warm beside the deployment's own, its memory reserved
    (idle models evicted if need be); EngineUnavailable when there is no room for both."""
    need, claims = host.estimate(new), kind_of(new).gpu_claims(new)
    async with host.budget_lock:
        await host.make_room(deployment, need, claims)
        deployment.reserve(need, claims)
    try:
        return await _started(host, new)
    except BaseException:
        deployment.reserve(0, {})
        raise


async def adopt_beside(
    host: Host, deployment: Deployment, new: ResolvedDeployment, engine: Engine
) -> None:
    """Move the deployment onto `engine` (serving `new`); the old worker drains and stops,
    its memory counted until then."""
    old = deployment.engine
    old_bytes, old_claims = deployment.estimate_bytes, dict(deployment.gpu_claims)
    host.adopt(deployment, new, engine)
    deployment.reserve(old_bytes, old_claims)  # until it stops
    if old is not None:
        await drain_and_stop(host, deployment, old)
    deployment.reserve(0, {})


async def _queued(host: Host, deployment: Deployment, new: ResolvedDeployment) -> None:
    old_resolved = deployment.resolved
    deployment.pause()
    try:
        old = deployment.unloading()  # it drains: new requests wait for the new version
        assert old is not None
        await drain_and_stop(host, deployment, old)
        deployment.stopped()
        host.adopt(deployment, new)
        if await host.load_now(deployment):
            return
        failed = deployment.error or "it did not load"
        log.error(
            "model %r: %s did not load (%s); going back to %s",
            deployment.name,
            new.version_label,
            failed,
            old_resolved.version_label,
        )
        host.adopt(deployment, old_resolved)
        await host.load_now(deployment)
        raise EngineUnavailable(failed)
    finally:
        deployment.resume()


async def drain_and_stop(host: Host, deployment: Deployment, old: Engine) -> None:
    """Let the requests on `old` finish (up to server.drain_timeout), then stop it."""
    pid = old.pid
    try:
        if deployment.serving(old):
            log.info(
                "model %r: %d request(s) still running on the old worker (pid %s)",
                deployment.name,
                deployment.serving(old),
                pid,
            )
        if not await deployment.drained(old, host.limits.drain_timeout_s):
            log.warning(
                "model %r: stopping the old worker with %d request(s) still running "
                "(server.drain_timeout %g s)",
                deployment.name,
                deployment.serving(old),
                host.limits.drain_timeout_s,
            )
    finally:
        await old.stop()
    log.info("model %r: stopped the old worker (pid %s)", deployment.name, pid)
