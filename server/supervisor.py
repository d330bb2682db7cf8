"""Starts one engine worker per deployment, tracks its state, and hands out ready engines.

This version loads every configured model when the gateway starts (in the background, so the
gateway answers health checks at once). A model that fails to load is reported with its reason
and leaves every other model serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cellar.deployments import ResolvedDeployment
from cellar.errors import EngineUnavailable, IntegrityError, ModelNotFound
from cellar.store import ModelStore
from engines.base import Engine, EngineState
from engines.launch import engine_name

log = logging.getLogger("cellar.supervisor")

Launcher = Callable[[ResolvedDeployment], Engine]
"""Builds a not-yet-started engine for a deployment."""


@dataclass
class Deployment:
    resolved: ResolvedDeployment
    engine: Engine | None = None
    error: str | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when loading ended, successfully or not."""

    @property
    def name(self) -> str:
        return self.resolved.spec.name

    @property
    def state(self) -> EngineState:
        if self.error is not None:
            return EngineState.FAILED
        if self.engine is not None:
            return self.engine.state
        return EngineState.STOPPED if self.loaded.is_set() else EngineState.STARTING


class Supervisor:
    def __init__(
        self, deployments: list[ResolvedDeployment], store: ModelStore, launcher: Launcher
    ) -> None:
        self._deployments = {d.spec.name: Deployment(d) for d in deployments}
        self._store = store
        self._launcher = launcher
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def names(self) -> list[str]:
        return list(self._deployments)

    def start_all(self) -> None:
        """Begin loading every deployment in the background."""
        self._tasks = [asyncio.create_task(self._load(d)) for d in self._deployments.values()]

    async def _load(self, deployment: Deployment) -> None:
        try:
            manifest = deployment.resolved.manifest
            if manifest is not None:
                await asyncio.to_thread(self._store.verify, manifest.name)
            engine = self._launcher(deployment.resolved)
            deployment.engine = engine
            await engine.start()
            await engine.wait_ready(deployment.resolved.spec.startup_timeout_s)
            log.info("model %r is ready at %s", deployment.name, engine.base_url)
        except IntegrityError as exc:
            deployment.error = f"refused to load: {exc}"
        except EngineUnavailable as exc:
            deployment.error = exc.message
        except Exception as exc:
            log.exception("loading %r failed", deployment.name)
            deployment.error = f"loading failed: {exc}"
        finally:
            if deployment.error:
                log.error("model %r is unavailable: %s", deployment.name, deployment.error)
            deployment.loaded.set()

    def get(self, name: str) -> Deployment:
        try:
            return self._deployments[name]
        except KeyError:
            raise ModelNotFound(
                f"The model `{name}` does not exist. Available models: "
                f"{', '.join(self._deployments) or 'none'}.",
                param="model",
            ) from None

    async def acquire(self, name: str) -> Engine:
        """The ready engine serving `name`; waits while it is still loading."""
        deployment = self.get(name)
        await deployment.loaded.wait()
        engine = deployment.engine
        if deployment.error is not None or engine is None:
            raise EngineUnavailable(f"model {name!r} is unavailable: {deployment.error}")
        if engine.state is not EngineState.READY:
            reason = engine.error or f"its worker is {engine.state}"
            raise EngineUnavailable(f"model {name!r} is unavailable: {reason}")
        return engine

    def ready_engines(self) -> dict[str, Engine]:
        return {
            d.name: d.engine
            for d in self._deployments.values()
            if d.engine is not None and d.state is EngineState.READY
        }

    def all_ready(self) -> bool:
        return all(d.state is EngineState.READY for d in self._deployments.values())

    def describe(self) -> list[dict[str, Any]]:
        """State of each deployment, for /admin/models and /health/ready."""
        out = []
        for d in self._deployments.values():
            spec = d.resolved.spec
            out.append(
                {
                    "name": d.name,
                    "state": d.state.value,
                    "error": d.error or (d.engine.error if d.engine else None),
                    "engine": engine_name(d.resolved),
                    "source": spec.source,
                    "path": str(d.resolved.path),
                    "sha256": d.resolved.manifest.sha256 if d.resolved.manifest else None,
                }
            )
        return out

    async def stop_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        engines = [d.engine for d in self._deployments.values() if d.engine is not None]
        await asyncio.gather(*(e.stop() for e in engines), return_exceptions=True)
