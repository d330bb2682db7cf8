"""The lifecycle of every deployment: load on demand, warm up, unload when idle, keep the total
under the memory budget, restart after crashes.

Each deployment's states and transitions are its own (server.deployment.Deployment); the
supervisor decides when they happen. A request takes a turn from the model's Admission first,
then waits (bounded) for the model to be ready; concurrent requests share one load. Load and
unload decisions that touch the memory budget (server.budget) are serialized by one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from cellar.config import ModelDeployment
from cellar.deployments import ResolvedDeployment, Resolver
from cellar.engines.base import Engine, EngineState
from cellar.engines.kinds import kind_of
from cellar.engines.warmup import warm_up, warm_up_embeddings
from cellar.errors import CellarError, EngineUnavailable, IntegrityError, ModelNotFound, StoreError
from cellar.server.admission import Admission
from cellar.server.budget import make_room
from cellar.server.deployment import (
    MAX_CONSECUTIVE_FAILURES,
    Deployment,
    Lease,
    Limits,
    State,
    keep_alive_of,
)
from cellar.server.metrics import Metrics
from cellar.server.rollout import switch_version
from cellar.store import STORE_PREFIX, ModelStore
from cellar.versions import parse_ref

log = logging.getLogger("cellar.supervisor")

Launcher = Callable[[ResolvedDeployment], Engine]
"""Builds a not-yet-started engine for a deployment."""
Estimator = Callable[[ResolvedDeployment], int]
"""Estimated RAM of a deployment, in bytes."""

MONITOR_PERIOD_S = 1.0
HEALTH_EVERY_S = 5.0
HEALTH_MISSES = 3
STABLE_AFTER_S = 60.0
"""A model ready this long forgets its earlier failures (and their backoff)."""


class Supervisor:
    def __init__(
        self,
        deployments: list[ResolvedDeployment],
        store: ModelStore,
        launcher: Launcher,
        estimator: Estimator,
        limits: Limits,
        metrics: Metrics,
        resolver: Resolver | None = None,
    ) -> None:
        self._store = store
        self._launcher = launcher
        self._estimator = estimator
        self._limits = limits
        self._metrics = metrics
        self._resolver = resolver
        """Resolves a deployment again when its tag moves or an operator asks for a reload."""
        self._deployments: dict[str, Deployment] = {}
        for resolved in deployments:
            spec = resolved.spec
            kind = kind_of(resolved)
            concurrency = spec.max_concurrency or kind.concurrency(resolved)
            self._deployments[spec.name] = Deployment(
                resolved=resolved,
                admission=Admission(
                    spec.name,
                    concurrency,
                    spec.max_queue,
                    separate_groups=bool(resolved.adapters) and not resolved.mixes_adapters,
                    background_share=limits.background_share,
                    grace_s=limits.interactive_grace_s,
                ),
                estimate_bytes=self.estimate(resolved),
                keep_alive_s=keep_alive_of(resolved, limits.keep_alive_s),
                context_window=kind.context_window(resolved),
                gpu_claims=kind.gpu_claims(resolved),
                on_state=self._state_metric,
            )
        self._routes: dict[str, tuple[Deployment, str]] = {}
        """Every name clients may ask for -> its deployment and the name its worker serves."""
        for deployment in self._deployments.values():
            self._routes[deployment.resolved.spec.name] = (
                deployment,
                deployment.resolved.spec.name,
            )
            for adapter in deployment.resolved.adapters:
                for name in (adapter.name, *adapter.aliases):
                    self._routes[name] = (deployment, adapter.name)
        self.budget_lock = asyncio.Lock()
        """Held while deciding what loads (and what is evicted) within the memory budget."""
        self._monitor: asyncio.Task[None] | None = None
        self._last_health = 0.0
        self._switches: dict[str, asyncio.Task[None]] = {}
        """Switches started by a tag move, by deployment."""

    @property
    def names(self) -> list[str]:
        """The deployments' names."""
        return list(self._deployments)

    def served(self) -> list[tuple[str, str | None]]:
        """Every name clients may ask for, with the model it is an adapter of (or None)."""
        found = []
        for name, (deployment, _) in self._routes.items():
            base = deployment.resolved.spec.name
            found.append((name, None if name == base else base))
        return found

    def worker_name(self, name: str) -> str:
        """The name the worker serves for a requested one (an adapter's alias -> MODEL:ADAPTER)."""
        return self._routes[name][1] if name in self._routes else name

    @property
    def budget_bytes(self) -> int:
        return self._limits.budget_bytes

    @property
    def limits(self) -> Limits:
        return self._limits

    def estimate(self, resolved: ResolvedDeployment) -> int:
        return resolved.spec.memory_estimate or self._estimator(resolved)

    def start(self) -> None:
        """Preload what the config asks for; watch every deployment from now on."""
        for deployment in self._deployments.values():
            if deployment.resolved.spec.preload:
                self._begin_load(deployment)
        self._monitor = asyncio.create_task(self._watch())

    def get(self, name: str) -> Deployment:
        """The deployment serving `name` (a model, or one of its adapters)."""
        try:
            return self._routes[name][0]
        except KeyError:
            raise ModelNotFound(
                f"The model `{name}` does not exist. Available models: "
                f"{', '.join(self._routes) or 'none'}.",
                param="model",
            ) from None

    # -- serving ---------------------------------------------------------------------------

    async def acquire(self, name: str, sticky: str | None = None, priority: int = 0) -> Lease:
        """A turn on the model's ready engine: waits in its queue (by `priority`, lower
        first), then for it to load. During a guarded rollout, `sticky` (the caller) decides
        which version answers."""
        deployment = self.get(name)
        await deployment.admission.enter(self.worker_name(name), priority)
        try:
            engine = await self._ready(deployment)
        except BaseException:
            deployment.admission.leave(priority)
            raise
        return deployment.lease(engine, sticky, priority)

    async def _ready(self, deployment: Deployment) -> Engine:
        if deployment.paused is not None:  # a switch with no room for both versions
            try:
                await asyncio.wait_for(deployment.paused.wait(), self._limits.load_timeout_s)
            except TimeoutError:
                raise EngineUnavailable(
                    f"model {deployment.name!r} is still switching versions after "
                    f"{self._limits.load_timeout_s:g} s; retry later"
                ) from None
        self._notice_crash(deployment)
        await deployment.wait_until(lambda: deployment.state is not State.UNLOADING)
        if deployment.state is State.READY and deployment.engine is not None:
            return deployment.engine
        if deployment.load_task is None or deployment.load_task.done():
            self._check_retry(deployment)
            self._begin_load(deployment)
        assert deployment.load_task is not None
        try:
            await asyncio.wait_for(
                asyncio.shield(deployment.load_task), self._limits.load_timeout_s
            )
        except TimeoutError:
            raise EngineUnavailable(
                f"model {deployment.name!r} is still loading after "
                f"{self._limits.load_timeout_s:g} s; retry later"
            ) from None
        if deployment.state is not State.READY or deployment.engine is None:
            raise EngineUnavailable(f"model {deployment.name!r} is unavailable: {deployment.error}")
        return deployment.engine

    def _check_retry(self, deployment: Deployment) -> None:
        if deployment.state is not State.FAILED:
            return
        if deployment.failures >= MAX_CONSECUTIVE_FAILURES:
            raise EngineUnavailable(
                f"model {deployment.name!r} failed {deployment.failures} times in a row and is "
                f"not retried automatically; last error: {deployment.error}. "
                f"Fix the cause, then POST /admin/models/{deployment.name}/load"
            )
        wait = deployment.retry_at - time.monotonic()
        if wait > 0:
            raise EngineUnavailable(
                f"model {deployment.name!r} is unavailable: {deployment.error}; "
                f"next restart in {wait:.0f} s"
            )

    # -- loading and unloading -------------------------------------------------------------

    def _begin_load(self, deployment: Deployment) -> None:
        deployment.start_loading(lambda: self._load(deployment))

    async def _load(self, deployment: Deployment) -> None:
        """Run only through `_begin_load`, which has set the state to loading."""
        started = time.monotonic()
        spec = deployment.resolved.spec
        try:
            await self.verify(deployment.resolved)
            async with self.budget_lock:
                await self.make_room(deployment)
                engine = self._launcher(deployment.resolved)
                deployment.attach(engine)
                await engine.start()
            await self.warm(engine, deployment.resolved, deployment.warming)
        except IntegrityError as exc:
            await self._fail(deployment, f"refused to load: {exc}")
        except EngineUnavailable as exc:
            await self._fail(deployment, exc.message)
        except Exception as exc:
            log.exception("loading %r failed", spec.name)
            await self._fail(deployment, f"loading failed: {exc}")
        else:
            deployment.loaded()
            self._metrics.load_duration.labels(spec.name).observe(time.monotonic() - started)
            log.info(
                "model %r is ready at %s (%.1f s)",
                spec.name,
                engine.channel.address,
                time.monotonic() - started,
            )

    async def verify(self, resolved: ResolvedDeployment) -> None:
        """Re-hash a stored artifact before it loads (IntegrityError when it changed)."""
        if resolved.manifest is not None:
            await asyncio.to_thread(self._store.verify_manifest, resolved.manifest)

    async def warm(
        self, engine: Engine, resolved: ResolvedDeployment, warming: Callable[[], None]
    ) -> None:
        """Wait for a started engine to be ready, then run the warm-up prompts through it."""
        spec = resolved.spec
        await engine.wait_ready(spec.startup_timeout_s)
        if spec.warmup.enabled and spec.warmup.prompts and spec.task == "embed":
            warming()
            took = await warm_up_embeddings(engine.channel.http, spec.name, spec.warmup.prompts)
            log.info("model %r (%s) warmed up in %.3f s", spec.name, resolved.version_label, took)
        elif spec.warmup.enabled and spec.warmup.prompts:
            warming()
            ttfts = await warm_up(
                engine.channel.http, spec.name, spec.warmup.prompts, spec.warmup.max_tokens
            )
            log.info(
                "model %r (%s) warmed up: TTFT %s s",
                spec.name,
                resolved.version_label,
                ", ".join(f"{t:.3f}" for t in ttfts),
            )

    async def _fail(self, deployment: Deployment, reason: str) -> None:
        engine = deployment.fail(reason, crashed=False)
        if engine is not None:
            await engine.stop()
        log.error("model %r is unavailable: %s", deployment.name, reason)

    async def make_room(
        self,
        deployment: Deployment,
        need: int | None = None,
        claims: dict[int, float] | None = None,
    ) -> None:
        """See server.budget.make_room (hold `budget_lock`)."""
        others = list(self._deployments.values())
        await make_room(self._limits.budget_bytes, others, deployment, self._unload, need, claims)

    async def _unload(self, deployment: Deployment, why: str) -> None:
        log.info("unloading model %r: %s", deployment.name, why)
        engine = deployment.unloading()
        if engine is not None:
            await engine.stop()
        deployment.stopped()

    async def load(self, name: str) -> Deployment:
        """Admin: load now (clearing earlier failures) and wait until ready or failed."""
        deployment = self.get(name)
        deployment.clear_failures()
        with contextlib.suppress(EngineUnavailable):
            await self._ready(deployment)
        return deployment

    async def unload(self, name: str) -> Deployment:
        """Admin: stop the model's worker now (in-flight requests get an error)."""
        deployment = self.get(name)
        if deployment.load_task is not None and not deployment.load_task.done():
            await asyncio.wait({deployment.load_task})
        if deployment.engine is not None:
            async with self.budget_lock:
                await self._unload(deployment, "asked to by an operator")
        return deployment

    def report_unreachable(self, lease: Lease) -> None:
        """A request found the worker refusing connections: treat it as crashed now."""
        deployment = lease.deployment
        if deployment.engine is lease.engine and deployment.state is State.READY:
            self._crashed(deployment, lease.engine.error or "its worker refused connections")

    # -- versions --------------------------------------------------------------------------

    def launch(self, resolved: ResolvedDeployment) -> Engine:
        return self._launcher(resolved)

    def adopt(
        self, deployment: Deployment, resolved: ResolvedDeployment, engine: Engine | None = None
    ) -> None:
        """Make `resolved` the deployment's version; with `engine` (started and warm), route
        new requests to it from now on."""
        kind = kind_of(resolved)
        deployment.adopt(
            resolved,
            self.estimate(resolved),
            kind.context_window(resolved),
            kind.gpu_claims(resolved),
            engine,
        )

    async def load_now(self, deployment: Deployment) -> bool:
        """Load the deployment's version and wait; whether it is ready."""
        self._begin_load(deployment)
        assert deployment.load_task is not None
        await asyncio.wait({deployment.load_task})
        return deployment.state is State.READY

    async def reload(self, name: str, why: str = "reload asked for by an operator") -> Deployment:
        """Admin: resolve the deployment's source again (its tag may have moved) and switch
        to a fresh worker of that version, failing no request (see server.rollout)."""
        deployment = self.get(name)
        if self._resolver is None:
            raise EngineUnavailable(f"model {deployment.name!r} cannot be reloaded here")
        try:
            new = await asyncio.to_thread(self._resolver, deployment.resolved.spec)
        except CellarError as exc:
            raise EngineUnavailable(f"cannot reload {deployment.name!r}: {exc.message}") from None
        await switch_version(self, deployment, new, why)
        return deployment

    def resolve(self, spec: ModelDeployment) -> ResolvedDeployment:
        """`spec` resolved against the store now (blocking: call it in a thread)."""
        if self._resolver is None:
            raise EngineUnavailable(f"model {spec.name!r} cannot be resolved again here")
        return self._resolver(spec)

    async def _follow_tag(self, deployment: Deployment) -> None:
        """Start a switch when the tag (or `latest`) the deployment's source names has moved."""
        source = deployment.resolved.spec.source
        if self._resolver is None or not source.startswith(STORE_PREFIX):
            return
        if deployment.name in self._switches or deployment.switch_lock.locked():
            return
        try:
            ref = parse_ref(source.removeprefix(STORE_PREFIX))
            if not ref.follows:
                return
            current = await asyncio.to_thread(self._store.get, str(ref))
        except StoreError:
            return  # a tag removed: keep serving what runs
        serving = deployment.resolved.version
        if serving is not None and current.sha256 in (serving.sha256, deployment.skip_sha256):
            return
        why = f"{ref} moved to version {current.version}"
        task = asyncio.create_task(self._switch_to_current(deployment, why, current.sha256))
        self._switches[deployment.name] = task
        task.add_done_callback(lambda _: self._switches.pop(deployment.name, None))

    async def _switch_to_current(self, deployment: Deployment, why: str, sha256: str) -> None:
        assert self._resolver is not None
        try:
            new = await asyncio.to_thread(self._resolver, deployment.resolved.spec)
            await switch_version(self, deployment, new, why)
        except CellarError as exc:
            log.error("model %r: not switched (%s): %s", deployment.name, why, exc.message)
            deployment.skip(sha256)  # until the tag moves again

    # -- watching --------------------------------------------------------------------------

    def _notice_crash(self, deployment: Deployment) -> None:
        engine = deployment.engine
        if deployment.state is State.READY and engine and engine.state is EngineState.FAILED:
            self._crashed(deployment, engine.error or "the worker died")

    def _crashed(self, deployment: Deployment, reason: str) -> None:
        engine = deployment.fail(reason, crashed=True)
        self._metrics.restarts.labels(deployment.name).inc()
        log.error("model %r crashed: %s", deployment.name, reason)
        if engine is not None:
            asyncio.get_running_loop().create_task(engine.stop())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_PERIOD_S)
            try:
                await self._check_all()
            except Exception:
                log.exception("deployment check failed")

    async def _check_all(self) -> None:
        now = time.monotonic()
        probe = now - self._last_health >= HEALTH_EVERY_S
        if probe:
            self._last_health = now
        for deployment in self._deployments.values():
            await self._follow_tag(deployment)
            if deployment.switching:
                continue  # server.rollout watches it until the switch is done
            self._notice_crash(deployment)
            if deployment.state is State.READY:
                await self._check_ready(deployment, now, probe)
            elif (
                deployment.state is State.FAILED
                and deployment.crashed
                and deployment.resolved.spec.preload
                and deployment.failures < MAX_CONSECUTIVE_FAILURES
                and now >= deployment.retry_at
            ):
                self._begin_load(deployment)  # a crashed preloaded model comes back by itself

    async def _check_ready(self, deployment: Deployment, now: float, probe: bool) -> None:
        if deployment.loaded_at and now - deployment.loaded_at > STABLE_AFTER_S:
            deployment.clear_failures()
        idle_for = now - deployment.last_used
        keep = deployment.keep_alive_s
        rolling = deployment.candidate is not None  # a rollout keeps both versions up
        if keep >= 0 and not deployment.busy and not rolling and idle_for > keep:
            async with self.budget_lock:
                if deployment.state is State.READY and not deployment.busy:
                    await self._unload(
                        deployment, f"idle for {idle_for:.0f} s (keep_alive {keep:g} s)"
                    )
            return
        if probe and deployment.engine is not None:
            healthy = await deployment.engine.health()
            if deployment.probed(healthy) >= HEALTH_MISSES:
                self._crashed(deployment, "the worker stopped answering its health checks")

    def _state_metric(self, deployment: Deployment) -> None:
        for each in State:
            self._metrics.model_state.labels(deployment.name, each.value).set(
                each is deployment.state
            )

    # -- views -----------------------------------------------------------------------------

    async def refresh_load(self) -> None:
        """Set the running/waiting gauges: the worker's own counts, plus requests waiting in
        the gateway for a turn or for the model to load."""
        for deployment in self._deployments.values():
            running, waiting = 0, deployment.admission.waiting
            engine = deployment.engine
            if engine is not None and deployment.state is State.READY:
                inside = await engine.load()
                if inside is None:
                    log.debug("no load figures from %s", deployment.name)
                else:
                    running, waiting = inside[0], waiting + inside[1]
            self._metrics.set_load(deployment.name, running, waiting)

    def all_preloaded_ready(self) -> bool:
        return all(
            d.state is State.READY for d in self._deployments.values() if d.resolved.spec.preload
        )

    def describe(self) -> list[dict[str, object]]:
        return [d.describe() for d in self._deployments.values()]

    async def stop_all(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        switches = list(self._switches.values())
        for switch in switches:
            switch.cancel()
        await asyncio.gather(*switches, return_exceptions=True)
        tasks = [d.load_task for d in self._deployments.values() if d.load_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engines = [d.engine for d in self._deployments.values() if d.engine is not None]
        await asyncio.gather(*(e.stop() for e in engines), return_exceptions=True)
