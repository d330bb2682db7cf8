"""Guarded rollouts: promoting a tag gradually, measured against the version it replaces.

`POST /admin/rollouts` (`cellar models promote N --from staging --to prod --canary 10,50,100`)
or a deployment's `rollout:` block (when its `from` tag moves) starts one on the deployment
that follows `N@to`. The candidate's worker starts beside the current one (the memory budget
must hold both; idle models are evicted for it), then each step sends its share
of the callers to the candidate (sticky: cellar.rollouts.bucket) and judges the step
(cellar.rollouts.judge) with the golden prompts run on the candidate. A failed step rolls back
at once: no new request goes to the candidate, those on it finish, its worker stops. After the
last step the tag moves (`promote` in the history) and the candidate's worker becomes the
deployment's; the old one drains and stops. Each decision is recorded in the model's history
(`cellar models history`) with its figures and sent to the webhook.

While a rollout runs, a file in `<store>/.rollouts/` says so. A gateway that stops or is
killed mid-rollout does not resume it: the next start records it as aborted (the tag never
moved, so the current version keeps serving) and tells the webhook. Requests are never failed
by a rollout: a candidate that cannot start, or dies, is rolled back, and its callers go back
to the current version.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from cellar.engines.base import Engine, EngineState
from cellar.errors import ApiError, CellarError, EngineUnavailable, InvalidRequest, StoreError
from cellar.rollouts import CANDIDATE, CURRENT, Answer, ArmStats, RolloutPlan, judge
from cellar.server.canary import Canary
from cellar.server.deployment import Candidate, Deployment, Lease, State
from cellar.server.metrics import Metrics, Outcome
from cellar.server.proxy import Tap
from cellar.server.rollout import adopt_beside, drain_and_stop, start_beside
from cellar.server.supervisor import Supervisor
from cellar.server.webhook import notify
from cellar.store import STORE_PREFIX, Manifest, ModelStore
from cellar.tags import promote_version, record_rollout
from cellar.versions import parse_ref

log = logging.getLogger("cellar.guarded")

STATE_DIR = ".rollouts"
TICK_S = 0.25
FINISHED = ("promoted", "rolled back", "aborted", "shadowed")


class Aborted(Exception):
    """An operator aborted the rollout."""


@dataclass
class Shadow:
    """Shadow mode's figures: the candidate's latency on mirrored requests, and how alike its
    answers are to the current version's."""

    latencies: list[float] = field(default_factory=list)
    current_latencies: list[float] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)
    errors: int = 0

    def describe(self) -> dict[str, Any]:
        def median(values: list[float]) -> float | None:
            return round(sorted(values)[len(values) // 2], 4) if values else None

        return {
            "mirrored": len(self.latencies) + self.errors,
            "errors": self.errors,
            "candidate_p50_s": median(self.latencies),
            "current_p50_s": median(self.current_latencies),
            "mean_similarity": (
                round(sum(self.similarities) / len(self.similarities), 3)
                if self.similarities
                else None
            ),
        }


@dataclass
class Rollout:
    model: str
    """The model's name in the store."""
    deployment: Deployment
    from_tag: str
    to_tag: str
    current: Manifest
    candidate: Manifest
    plan: RolloutPlan
    state: str = "starting"
    step: int = 0
    paused: bool = False
    abort_reason: str | None = None
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    step_elapsed_s: float = 0.0
    stats: dict[str, ArmStats] = field(default_factory=dict)
    last_current: ArmStats | None = None
    """The current version's figures of the last step it served enough requests in (the
    yardstick of the 100% step, where it serves none)."""
    served: list[dict[str, Any]] = field(default_factory=list)
    """Per step: its share, and the requests each version answered."""
    decisions: list[str] = field(default_factory=list)
    shadow: Shadow = field(default_factory=Shadow)
    task: asyncio.Task[None] | None = None

    @property
    def share(self) -> int:
        steps = self.plan.steps
        if not steps:
            return 0
        return steps[self.step] if self.step < len(steps) else 100

    def record(self, arm: str, status: int, seconds: float, tap: Tap) -> None:
        answer = Answer(status, seconds, tap.ttft_s, tap.completion_tokens, tap.finish_reason)
        if self.plan.checks and status < 400:
            text = tap.answer_text()
            answer.check_failure = next(
                (f for c in self.plan.checks if (f := c.failure(text)) is not None), None
            )
        self.stats.setdefault(arm, ArmStats()).add(answer)

    def describe(self) -> dict[str, Any]:
        counts = {arm: self.stats.get(arm, ArmStats()).requests for arm in (CURRENT, CANDIDATE)}
        return {
            "model": self.model,
            "deployment": self.deployment.name,
            "from": self.from_tag,
            "to": self.to_tag,
            "current": self.current.label,
            "candidate": self.candidate.label,
            "state": "paused" if self.paused and self.state == "running" else self.state,
            "steps": self.plan.steps,
            "step": self.step + 1,
            "share": self.share,
            "step_s": self.plan.step,
            "step_elapsed_s": round(self.step_elapsed_s, 1),
            "this_step": counts,
            "served": self.served,
            "decisions": self.decisions,
            "shadow": self.shadow.describe() if self.plan.shadow else None,
            "started": self.started,
        }


@dataclass
class _Current:
    """How the current version answered a request that shadow mode mirrored."""

    status: int = 0
    seconds: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finished(self, status: int, seconds: float) -> None:
        self.status, self.seconds = status, seconds
        self.done.set()


class GuardedRollouts:
    def __init__(
        self,
        supervisor: Supervisor,
        store: ModelStore,
        canary: Canary,
        metrics: Metrics,
        http: httpx.AsyncClient,
        webhook: str | None,
    ) -> None:
        self._supervisor = supervisor
        self._store = store
        self._canary = canary
        self._metrics = metrics
        self._http = http
        self._webhook = webhook
        self._rollouts: dict[str, Rollout] = {}
        """By the deployment's name: the running one, or the last one that ran."""
        self._watcher: asyncio.Task[None] | None = None
        self._tried: dict[str, str] = {}
        """By deployment: the candidate sha256 its `rollout:` block last started."""
        self._mirrors: set[asyncio.Task[None]] = set()

    @property
    def _dir(self) -> Path:
        return self._store.root / STATE_DIR

    # -- starting ------------------------------------------------------------------------

    def start_watching(self) -> None:
        """Roll out automatically for deployments with a `rollout:` block."""
        if any(self._supervisor.get(n).resolved.spec.rollout for n in self._supervisor.names):
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            for name in self._supervisor.names:
                deployment = self._supervisor.get(name)
                settings = deployment.resolved.spec.rollout
                if settings is None or self.running(name) is not None:
                    continue
                try:
                    model, to_tag = self._follows(deployment)
                    wanted = await asyncio.to_thread(
                        self._store.get, f"{model}@{settings.from_tag}"
                    )
                except (StoreError, InvalidRequest):
                    continue
                serving = deployment.resolved.version
                if serving is None or wanted.sha256 in (serving.sha256, self._tried.get(name)):
                    continue
                self._tried[name] = wanted.sha256
                try:
                    await self.start(model, settings.from_tag, to_tag, settings.plan())
                except ApiError as exc:
                    log.error("model %r: the configured rollout did not start: %s", name, exc)

    def _follows(self, deployment: Deployment) -> tuple[str, str]:
        source = deployment.resolved.spec.source
        ref = (
            parse_ref(source.removeprefix(STORE_PREFIX))
            if source.startswith(STORE_PREFIX)
            else None
        )
        if ref is None or ref.tag is None:
            raise InvalidRequest(f"model {deployment.name!r} does not follow a tag")
        return ref.name, ref.tag

    def running(self, deployment: str) -> Rollout | None:
        rollout = self._rollouts.get(deployment)
        return rollout if rollout is not None and rollout.state not in FINISHED else None

    async def start(self, model: str, from_tag: str, to_tag: str, plan: RolloutPlan) -> Rollout:
        """Begin rolling `model@to_tag` out to the version `model@from_tag` holds."""
        following = [
            self._supervisor.get(n)
            for n in self._supervisor.names
            if self._supervisor.get(n).resolved.spec.source == f"{STORE_PREFIX}{model}@{to_tag}"
        ]
        if len(following) != 1:
            served = ", ".join(repr(d.name) for d in following) or "none"
            raise InvalidRequest(
                f"a guarded rollout needs one deployment with `source: store:{model}@{to_tag}`; "
                f"this gateway has {served}",
                param="model",
            )
        deployment = following[0]
        if self.running(deployment.name) is not None:
            raise InvalidRequest(f"a rollout of {model}@{to_tag} is already running")
        if deployment.switch_lock.locked():
            raise InvalidRequest(f"model {deployment.name!r} is switching versions; retry later")
        try:
            candidate = await asyncio.to_thread(self._store.get, f"{model}@{from_tag}")
            current = deployment.resolved.version
            if current is None:
                current = await asyncio.to_thread(self._store.get, f"{model}@{to_tag}")
        except StoreError as exc:
            raise InvalidRequest(exc.message, param="from") from None
        if candidate.sha256 == current.sha256:
            raise InvalidRequest(
                f"{model}@{from_tag} and {model}@{to_tag} are the same version "
                f"({candidate.label}): nothing to roll out"
            )
        rollout = Rollout(model, deployment, from_tag, to_tag, current, candidate, plan)
        self._rollouts[deployment.name] = rollout
        self._save(rollout)
        rollout.task = asyncio.create_task(self._run(rollout))
        return rollout

    # -- serving -------------------------------------------------------------------------

    def observe(
        self, lease: Lease, outcome: Outcome, tap: Tap, path: str, body: dict[str, Any]
    ) -> None:
        """A request leased during a rollout: count it for its version; mirror it in shadow
        mode."""
        rollout = self.running(lease.deployment.name)
        if rollout is None or lease.arm is None or rollout.state != "running":
            return
        if rollout.plan.checks or lease.shadow:
            tap.keep_text = True
        arm = lease.arm
        outcome.observers.append(lambda status, seconds: rollout.record(arm, status, seconds, tap))
        candidate = lease.deployment.candidate
        if lease.shadow and candidate is not None:
            mirrored = {**body, "stream": False}
            mirrored.pop("stream_options", None)
            current = _Current()
            outcome.observers.append(current.finished)
            task = asyncio.create_task(
                self._mirror(rollout, candidate, path, mirrored, tap, current)
            )
            self._mirrors.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(self._mirrors.discard)

    async def _mirror(
        self,
        rollout: Rollout,
        candidate: Candidate,
        path: str,
        body: dict[str, Any],
        tap: Tap,
        current: _Current,
    ) -> None:
        started = time.monotonic()
        try:
            response = await candidate.engine.channel.http.post(path, json=body)
            seconds = time.monotonic() - started
            answer = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            answer, seconds = None, 0.0
        if answer is None:
            rollout.shadow.errors += 1
            return
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        text = text if isinstance(text, str) else str(choice.get("text") or "")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(current.done.wait(), 600)
        if current.seconds is None or current.status >= 400:
            return  # nothing to compare with
        shadow = rollout.shadow
        shadow.latencies.append(seconds)
        shadow.current_latencies.append(current.seconds)
        shadow.similarities.append(difflib.SequenceMatcher(None, tap.answer_text(), text).ratio())

    # -- running -------------------------------------------------------------------------

    async def _run(self, rollout: Rollout) -> None:
        deployment = rollout.deployment
        async with deployment.switch_lock:  # no tag-following switch meanwhile
            engine: Engine | None = None
            try:
                engine = await self._launch(rollout)
                rollout.state = "running"
                await self._steps(rollout, engine)
            except Aborted:
                await self._roll_back(
                    rollout, engine, f"aborted: {rollout.abort_reason}", "aborted"
                )
            except asyncio.CancelledError:
                await self._roll_back(
                    rollout, engine, "aborted: the gateway is stopping", "aborted"
                )
                raise
            except Exception as exc:
                reason = (
                    exc.message if isinstance(exc, CellarError) else f"{type(exc).__name__}: {exc}"
                )
                log.exception("model %r: rollout failed", deployment.name)
                await self._roll_back(rollout, engine, f"rolled back: {reason}", "rolled back")
            finally:
                self._set_share_metrics(rollout, finished=True)
                self._forget(rollout)

    async def _launch(self, rollout: Rollout) -> Engine:
        deployment = rollout.deployment
        if deployment.state is not State.READY:
            await self._supervisor.load(deployment.name)
        source = f"{STORE_PREFIX}{rollout.model}@{rollout.candidate.version}"
        resolved = await asyncio.to_thread(
            self._supervisor.resolve, deployment.resolved.spec.model_copy(update={"source": source})
        )
        engine = await start_beside(self._supervisor, deployment, resolved)
        deployment.candidate = Candidate(resolved, engine, salt=secrets.token_hex(8))
        return engine

    async def _shadow_only(self, rollout: Rollout, engine: Engine) -> None:
        """One step in which the candidate answers nobody; then its figures, and it stops."""
        candidate = rollout.deployment.candidate
        assert candidate is not None
        candidate.shadow = float(rollout.plan.shadow)
        await self._wait_step(rollout, engine)
        figures = rollout.shadow.describe()
        text = (
            f"shadow run done: {figures['mirrored']} requests mirrored ({figures['errors']} "
            f"failed); p50 latency {figures['current_p50_s']} s current, "
            f"{figures['candidate_p50_s']} s candidate; answers {figures['mean_similarity']} "
            "alike (1 = identical); nothing promoted"
        )
        await self._roll_back(rollout, engine, text, "shadowed")

    async def _steps(self, rollout: Rollout, engine: Engine) -> None:
        plan, deployment = rollout.plan, rollout.deployment
        if not plan.steps:
            await self._shadow_only(rollout, engine)
            return
        for index, share in enumerate(plan.steps):
            rollout.step, rollout.stats, rollout.step_elapsed_s = index, {}, 0.0
            began = time.time()
            candidate = deployment.candidate
            assert candidate is not None
            candidate.share, candidate.shadow = float(share), float(plan.shadow)
            self._set_share_metrics(rollout)
            await self._wait_step(rollout, engine)
            failures = [
                f"{r.prompt}: {r.detail}"
                for r in await self._canary.try_engine(
                    deployment.name, engine, rollout.candidate.label
                )
                if not r.passed
            ]
            current = rollout.stats.get(CURRENT, ArmStats())
            new = rollout.stats.get(CANDIDATE, ArmStats())
            rollout.served.append(
                {
                    "share": share,
                    "current": current.requests,
                    "candidate": new.requests,
                    "began": round(began, 3),
                    "ended": round(time.time(), 3),
                }
            )
            yardstick = current
            if current.requests < plan.bounds.min_requests and rollout.last_current is not None:
                yardstick = rollout.last_current
            elif current.requests >= plan.bounds.min_requests:
                rollout.last_current = current
            verdict = judge(yardstick, new, plan.bounds, failures)
            served = f"{new.requests} of {new.requests + current.requests} requests"
            head = f"step {index + 1}/{len(plan.steps)} ({share}%, candidate served {served})"
            if not verdict.passed:
                reason = f"rolled back {rollout.to_tag}: candidate " + "; ".join(verdict.reasons)
                await self._roll_back(rollout, engine, f"{head}: {reason}", "rolled back")
                return
            await self._decide(rollout, f"{head}: passed: " + "; ".join(verdict.compared), "step")
        await self._promote(rollout, engine)

    async def _wait_step(self, rollout: Rollout, engine: Engine) -> None:
        """The step's length, and on (up to three lengths) until each version that should
        have traffic answered `min_requests`."""
        deployment, plan = rollout.deployment, rollout.plan
        while rollout.step_elapsed_s < plan.step or (
            rollout.step_elapsed_s < 3 * plan.step and not self._enough(rollout)
        ):
            await asyncio.sleep(TICK_S)
            if rollout.abort_reason is not None:
                raise Aborted
            if engine.state is EngineState.FAILED:
                raise EngineUnavailable(
                    f"the candidate's worker died: {engine.error or 'no reason given'}"
                )
            if deployment.state is not State.READY:
                raise EngineUnavailable(f"the current version is {deployment.state.value}")
            if not rollout.paused:
                rollout.step_elapsed_s += TICK_S

    @staticmethod
    def _enough(rollout: Rollout) -> bool:
        share, need = rollout.share, rollout.plan.bounds.min_requests
        counts = {arm: rollout.stats.get(arm, ArmStats()).requests for arm in (CURRENT, CANDIDATE)}
        current_ok = share == 100 or counts[CURRENT] >= need
        candidate_ok = share == 0 or counts[CANDIDATE] >= need
        return current_ok and candidate_ok

    async def _promote(self, rollout: Rollout, engine: Engine) -> None:
        deployment = rollout.deployment
        steps = ", ".join(f"{s}%" for s in rollout.plan.steps)
        why = f"guarded rollout: {steps} passed"
        await asyncio.to_thread(
            promote_version,
            self._store,
            rollout.model,
            rollout.candidate.version,
            rollout.to_tag,
            why,
        )
        resolved = await asyncio.to_thread(self._supervisor.resolve, deployment.resolved.spec)
        deployment.candidate = None
        await adopt_beside(self._supervisor, deployment, resolved, engine)
        version = rollout.candidate.version
        text = f"promoted {rollout.model}@{rollout.to_tag} to version {version} ({why})"
        rollout.decisions.append(text)
        await self._tell(rollout, text, "promoted")
        rollout.state = "promoted"

    async def _roll_back(
        self, rollout: Rollout, engine: Engine | None, why: str, state: str
    ) -> None:
        deployment = rollout.deployment
        deployment.candidate = None  # new requests go to the current version only
        if engine is not None:
            await drain_and_stop(self._supervisor, deployment, engine)
        deployment.reserve(0, {})
        await self._decide(rollout, why, state)
        rollout.state = state

    async def _decide(self, rollout: Rollout, text: str, status: str) -> None:
        rollout.decisions.append(text)
        await asyncio.to_thread(
            record_rollout,
            self._store,
            rollout.model,
            rollout.to_tag,
            rollout.current.version,
            rollout.candidate.version,
            text,
        )
        await self._tell(rollout, text, status)

    async def _tell(self, rollout: Rollout, text: str, status: str) -> None:
        log.info("model %r: %s", rollout.deployment.name, text)
        body = {
            "text": f"Cellar rollout of {rollout.model}@{rollout.to_tag}: {text}",
            "model": rollout.deployment.name,
            "status": status,
            "rollout": rollout.describe(),
        }
        await notify(self._http, self._webhook, body, "rollout")

    def _set_share_metrics(self, rollout: Rollout, finished: bool = False) -> None:
        share = 0 if finished else rollout.share
        gauge = self._metrics.rollout_share
        gauge.labels(rollout.deployment.name, rollout.candidate.label).set(share)
        gauge.labels(rollout.deployment.name, rollout.current.label).set(100 - share)

    # -- operators -----------------------------------------------------------------------

    def get(self, deployment: str) -> Rollout:
        rollout = self._rollouts.get(deployment)
        if rollout is None:
            raise InvalidRequest(f"model {deployment!r} has no rollout", param="model")
        return rollout

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self._rollouts.values()]

    def pause(self, deployment: str, paused: bool) -> Rollout:
        rollout = self.running(deployment)
        if rollout is None:
            raise InvalidRequest(f"model {deployment!r} has no running rollout", param="model")
        rollout.paused = paused
        return rollout

    def abort(self, deployment: str, why: str) -> Rollout:
        rollout = self.running(deployment)
        if rollout is None:
            raise InvalidRequest(f"model {deployment!r} has no running rollout", param="model")
        rollout.abort_reason = why
        return rollout

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for rollout in list(self._rollouts.values()):
            if rollout.task is not None and not rollout.task.done():
                rollout.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await rollout.task

    # -- surviving restarts --------------------------------------------------------------

    def _save(self, rollout: Rollout) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        record = {
            "model": rollout.model,
            "deployment": rollout.deployment.name,
            "from": rollout.from_tag,
            "to": rollout.to_tag,
            "current": rollout.current.version,
            "candidate": rollout.candidate.version,
            "started": rollout.started,
        }
        (self._dir / f"{rollout.deployment.name}.json").write_text(json.dumps(record))

    def _forget(self, rollout: Rollout) -> None:
        (self._dir / f"{rollout.deployment.name}.json").unlink(missing_ok=True)

    async def recover(self) -> None:
        """Rollouts a stopped or killed gateway left: recorded as aborted (or, if the tag had
        moved already, as done), and told to the webhook."""
        if not self._dir.is_dir():
            return
        for path in sorted(self._dir.glob("*.json")):
            try:
                left = json.loads(path.read_text())
                model, tag = left["model"], left["to"]
                tags = (await asyncio.to_thread(self._store.refs.read, model)).tags
            except (OSError, ValueError, KeyError, StoreError):
                log.warning("unreadable rollout record %s: removed", path)
                path.unlink(missing_ok=True)
                continue
            if tags.get(tag) == left["candidate"]:
                text = f"the rollout to version {left['candidate']} had completed"
            else:
                text = (
                    f"aborted: the gateway restarted mid-rollout; {model}@{tag} stays at "
                    f"version {tags.get(tag)} (start it again to retry version {left['candidate']})"
                )
                await asyncio.to_thread(
                    record_rollout,
                    self._store,
                    model,
                    tag,
                    left["current"],
                    left["candidate"],
                    text,
                )
            log.warning("rollout of %s@%s: %s", model, tag, text)
            body = {
                "text": f"Cellar rollout of {model}@{tag}: {text}",
                "model": left.get("deployment"),
                "status": "aborted",
            }
            await notify(self._http, self._webhook, body, "rollout")
            path.unlink(missing_ok=True)
