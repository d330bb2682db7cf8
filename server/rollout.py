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
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cellar.deployments import ResolvedDeployment
from cellar.engines.base import Engine
from cellar.engines.kinds import kind_of
from cellar.errors import ApiError, EngineUnavailable
from cellar.server.deployment import Deployment, State

if TYPE_CHECKING:
    from cellar.server.supervisor import Supervisor

log = logging.getLogger("cellar.rollout")


def _sha(resolved: ResolvedDeployment) -> str | None:
    return resolved.version.sha256 if resolved.version is not None else None


async def switch_version(
    supervisor: Supervisor, deployment: Deployment, new: ResolvedDeployment, why: str
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
        deployment.last_switch = record
        started = time.monotonic()
        log.info(
            "model %r: switching %s -> %s (%s)", deployment.name, record["from"], record["to"], why
        )
        try:
            record["mode"] = await _switch(supervisor, deployment, new)
        except Exception as exc:
            reason = exc.message if isinstance(exc, ApiError) else str(exc)
            record.update(outcome="failed", error=reason)
            deployment.skip_sha256 = _sha(new)
            log.error(
                "model %r: switching to %s failed, %s keeps serving: %s",
                deployment.name,
                new.version_label,
                deployment.resolved.version_label,
                reason,
            )
            raise EngineUnavailable(f"switching to {new.version_label} failed: {reason}") from None
        record.update(outcome="done", seconds=round(time.monotonic() - started, 1))
        log.info(
            "model %r: now serving %s (%s, %.1f s)",
            deployment.name,
            new.version_label,
            record["mode"],
            time.monotonic() - started,
        )


async def _switch(supervisor: Supervisor, deployment: Deployment, new: ResolvedDeployment) -> str:
    if deployment.load_task is not None and not deployment.load_task.done():
        await asyncio.wait({deployment.load_task})
    if deployment.state is not State.READY or deployment.engine is None:
        supervisor.adopt(deployment, new)
        return "not loaded (the next request loads the new version)"
    deployment.switching = True
    try:
        need, claims = supervisor.estimate(new), kind_of(new).gpu_claims(new)
        lacking: str | None = None
        async with supervisor.budget_lock:
            try:
                await supervisor.make_room(deployment, need, claims)
            except EngineUnavailable as exc:
                lacking = exc.message
            else:
                deployment.extra_bytes, deployment.extra_claims = need, claims
        if lacking is None:
            await _side_by_side(supervisor, deployment, new)
            return "side by side"
        log.warning(
            "model %r: no room to run %s beside %s (%s); new requests queue in the gateway "
            "until the switch completes",
            deployment.name,
            new.version_label,
            deployment.resolved.version_label,
            lacking,
        )
        await _queued(supervisor, deployment, new)
        return "queued (no room for both versions)"
    finally:
        deployment.switching = False
        deployment.extra_bytes, deployment.extra_claims = 0, {}


async def _side_by_side(
    supervisor: Supervisor, deployment: Deployment, new: ResolvedDeployment
) -> None:
    await supervisor.verify(new)
    engine = supervisor.launch(new)
    try:
        await engine.start()
        await supervisor.warm(engine, new, lambda: None)
    except BaseException:
        await engine.stop()
        raise
    old = deployment.engine
    assert old is not None
    old_bytes, old_claims = deployment.estimate_bytes, dict(deployment.gpu_claims)
    supervisor.adopt(deployment, new, engine)
    deployment.extra_bytes, deployment.extra_claims = old_bytes, old_claims  # until it stops
    await _drain_and_stop(supervisor, deployment, old)


async def _queued(supervisor: Supervisor, deployment: Deployment, new: ResolvedDeployment) -> None:
    old_resolved, old = deployment.resolved, deployment.engine
    assert old is not None
    deployment.paused = asyncio.Event()
    try:
        await _drain_and_stop(supervisor, deployment, old)
        deployment.engine = None
        supervisor.adopt(deployment, new)
        if await supervisor.load_now(deployment):
            return
        failed = deployment.error or "it did not load"
        log.error(
            "model %r: %s did not load (%s); going back to %s",
            deployment.name,
            new.version_label,
            failed,
            old_resolved.version_label,
        )
        supervisor.adopt(deployment, old_resolved)
        await supervisor.load_now(deployment)
        raise EngineUnavailable(failed)
    finally:
        deployment.paused.set()
        deployment.paused = None


async def _drain_and_stop(supervisor: Supervisor, deployment: Deployment, old: Engine) -> None:
    """Let the requests on `old` finish (up to server.drain_timeout), then stop it."""
    pid = old.pid
    try:
        deadline = time.monotonic() + supervisor.limits.drain_timeout_s
        if deployment.serving(old):
            log.info(
                "model %r: %d request(s) still running on the old worker (pid %s)",
                deployment.name,
                deployment.serving(old),
                pid,
            )
        while deployment.serving(old) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if deployment.serving(old):
            log.warning(
                "model %r: stopping the old worker with %d request(s) still running "
                "(server.drain_timeout %g s)",
                deployment.name,
                deployment.serving(old),
                supervisor.limits.drain_timeout_s,
            )
    finally:
        await old.stop()
    log.info("model %r: stopped the old worker (pid %s)", deployment.name, pid)
