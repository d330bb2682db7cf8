"""The drift report on a schedule (`drift.interval`): every model's window against its baseline,
read from the gateway's own audit log in a thread; scores as `cellar:drift_score` gauges, and
one webhook message per model when features pass `drift.threshold` (again only after they have
come back under it)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from cellar.auditlog import read_lines
from cellar.config_access import DriftSettings
from cellar.drift import FeatureDrift, Span, compare, split_lines
from cellar.server.metrics import Metrics
from cellar.server.webhook import notify

log = logging.getLogger("cellar.drift")


class DriftMonitor:
    def __init__(
        self,
        settings: DriftSettings,
        audit_path: Path | None,
        models: list[str],
        metrics: Metrics,
        http: httpx.AsyncClient,
        webhook: str | None,
    ) -> None:
        self.settings = settings
        self._audit = audit_path
        self._models = set(models)
        self._metrics = metrics
        self._http = http
        self._webhook = webhook
        self._alerted: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Whether there is an audit log to read."""
        return self._audit is not None

    def start(self) -> None:
        if self.settings.interval and self.ready and self._models:
            self._task = asyncio.create_task(self._every(self.settings.interval))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run()
            except Exception:
                log.exception("drift run failed")

    def _measure(self, now: datetime) -> dict[str, list[FeatureDrift]]:
        assert self._audit is not None
        split = now - timedelta(seconds=self.settings.window)
        spans = (Span(split - timedelta(seconds=self.settings.baseline), split), Span(split, now))
        found = split_lines(read_lines(self._audit, spans[0].start), spans, self._models)
        return {model: compare(base.lines, window.lines) for model, (base, window) in found.items()}

    async def run(self) -> dict[str, list[FeatureDrift]]:
        measured = await asyncio.to_thread(self._measure, datetime.now(UTC))
        for model, results in measured.items():
            for result in results:
                if result.psi is not None:
                    self._metrics.drift_score.labels(model, result.feature).set(result.psi)
            await self._judge(model, results)
        return measured

    async def _judge(self, model: str, results: list[FeatureDrift]) -> None:
        over = [r for r in results if r.drifted(self.settings.threshold)]
        before = self._alerted.get(model, set())
        self._alerted[model] = {r.feature for r in over}
        new = [r for r in over if r.feature not in before]
        if not new:
            return
        parts = [
            f"{r.feature} PSI {r.psi:.2f} ({r.summary(r.baseline)} -> {r.summary(r.window)})"
            for r in new
        ]
        text = f"Cellar drift: {model}: " + "; ".join(parts)
        log.warning("%s", text)
        body = {
            "text": text,
            "model": model,
            "status": "drift",
            "features": {r.feature: round(r.psi or 0.0, 4) for r in over},
        }
        await notify(self._http, self._webhook, body, "drift")
