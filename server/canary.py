"""Canary checks: each model's golden prompts, run on a schedule and on demand.

Every run of a golden prompt goes to the model's worker like any request (it takes a turn, and
loads the model if needed), at temperature 0. The answer must match its regex or be JSON valid
against its schema. An embedding model's golden is two texts, embedded together: the cosine
similarity of their vectors must stay within its bounds. Each result goes to the history CSV
and to Prometheus gauges. A model whose runs fail `failures_to_alert` times in a row gets one
alert POSTed to the webhook; the first passing run after that sends a recovery message.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from cellar.config_access import CanarySettings, GoldenPrompt
from cellar.engines.base import Engine
from cellar.errors import ApiError
from cellar.protocol import EmbeddingRequest, request_for
from cellar.server.metrics import Metrics
from cellar.server.supervisor import Supervisor
from cellar.server.webhook import notify

log = logging.getLogger("cellar.canary")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
HISTORY_FIELDS = ("time", "model", "prompt", "passed", "latency_ms", "detail", "version")
"""The history CSV's columns (`version`, the stored version asked, came last: older files
lack it)."""


@dataclass(frozen=True)
class Result:
    time: str
    model: str
    prompt: str
    passed: bool
    latency_ms: float
    detail: str
    version: str = ""
    """The stored version asked (NAME@K), when the model comes from the store."""


def check_answer(golden: GoldenPrompt, text: str) -> str | None:
    """Why the answer fails its expectation; None when it passes."""
    if golden.expect_regex is not None:
        if re.search(golden.expect_regex, text):
            return None
        return f"answer does not match /{golden.expect_regex}/: {text[:200]!r}"
    try:
        document = json.loads(text)
    except ValueError as exc:
        return f"answer is not JSON ({exc}): {text[:200]!r}"
    try:
        jsonschema.validate(document, golden.expect_json_schema or {})
    except jsonschema.ValidationError as exc:
        return f"answer does not fit the schema: {exc.message}"
    return None


def check_vectors(golden: GoldenPrompt, answer: dict[str, Any]) -> str | None:
    """Why the two texts' vectors are too close or too far apart; None when they pass."""
    a, b = (item["embedding"] for item in answer["data"])
    norms = math.hypot(*a) * math.hypot(*b)
    cosine = sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0
    if golden.min_cosine is not None and cosine < golden.min_cosine:
        return f"cosine similarity {cosine:.4f} is below {golden.min_cosine}"
    if golden.max_cosine is not None and cosine > golden.max_cosine:
        return f"cosine similarity {cosine:.4f} is above {golden.max_cosine}"
    return None


def _text(answer: dict[str, Any]) -> str:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(choice.get("text") or "")


def _generation(golden: GoldenPrompt) -> tuple[str, dict[str, Any]]:
    """The path and body of a prompt's golden, greedy."""
    payload: dict[str, Any] = {"max_tokens": golden.max_tokens, "temperature": 0.0}
    if golden.messages is not None:
        return CHAT_PATH, {**payload, "messages": golden.messages, "stream": False}
    return COMPLETIONS_PATH, {**payload, "prompt": golden.prompt, "stream": False}


class Canary:
    def __init__(
        self,
        settings: CanarySettings,
        supervisor: Supervisor,
        metrics: Metrics,
        history: Path,
        http: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self._supervisor = supervisor
        self._metrics = metrics
        self._history = history
        self._http = http
        self._failures: dict[str, int] = {}
        self._alerted: set[str] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def models(self) -> list[str]:
        names = self._supervisor.names
        return [n for n in names if self._supervisor.get(n).resolved.spec.canary]

    def start(self) -> None:
        if self.settings.interval and self.models():
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
                log.exception("canary run failed")

    async def run(self, models: list[str] | None = None) -> list[Result]:
        """Run the golden prompts of `models` (default: every model that has some)."""
        async with self._lock:
            results = []
            for name in models or self.models():
                resolved = self._supervisor.get(name).resolved
                version = resolved.version.label if resolved.version is not None else ""
                mine = [
                    await self._one(name, i, g, version=version)
                    for i, g in enumerate(resolved.spec.canary)
                ]
                results += mine
                await self._track(name, mine)
            await asyncio.to_thread(self._append, results)
            return results

    async def try_engine(self, model: str, engine: Engine, version: str) -> list[Result]:
        """The model's golden prompts on `engine` (a guarded rollout's candidate, `version`),
        outside the schedule: kept in the history, but no gauges or alerts."""
        spec = self._supervisor.get(model).resolved.spec
        results = [await self._one(model, i, g, engine, version) for i, g in enumerate(spec.canary)]
        await asyncio.to_thread(self._append, results)
        return results

    async def _one(
        self,
        model: str,
        index: int,
        golden: GoldenPrompt,
        engine: Engine | None = None,
        version: str = "",
    ) -> Result:
        label = golden.name or f"#{index}"
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout):
                if golden.embeds:
                    inputs = {"input": golden.texts}
                    answer = await self._ask(model, EMBEDDINGS_PATH, inputs, engine)
                    detail = check_vectors(golden, answer)
                else:
                    path, payload = _generation(golden)
                    answer = await self._ask(model, path, payload, engine)
                    detail = check_answer(golden, _text(answer))
        except (ApiError, httpx.HTTPError, TimeoutError, ValueError, KeyError) as exc:
            detail = f"request failed: {type(exc).__name__}: {exc}"
        latency = time.monotonic() - started
        if engine is None:
            self._metrics.canary_passed.labels(model, label).set(1 if detail is None else 0)
            self._metrics.canary_latency.labels(model, label).set(latency)
        if detail is not None:
            log.warning("canary %s %s failed: %s", model, label, detail)
        return Result(
            datetime.now(UTC).isoformat(),
            model,
            label,
            detail is None,
            round(latency * 1000, 1),
            detail or "",
            version,
        )

    async def _ask(
        self, model: str, path: str, payload: dict[str, Any], engine: Engine | None = None
    ) -> dict[str, Any]:
        payload = {"model": model, **payload}
        request = (
            EmbeddingRequest.model_validate(payload)
            if path == EMBEDDINGS_PATH
            else request_for(path, payload)
        )
        if engine is not None:
            response = await engine.channel.http.post(path, json=engine.prepare(path, request))
        else:
            lease = await self._supervisor.acquire(model)
            try:
                body = lease.engine.prepare(path, request)
                response = await lease.engine.channel.http.post(path, json=body)
            finally:
                lease.release()
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
        answer: dict[str, Any] = response.json()
        return answer

    async def _track(self, model: str, results: list[Result]) -> None:
        self._metrics.canary_last_run.labels(model).set(time.time())
        failed = [r for r in results if not r.passed]
        if not failed:
            self._failures[model] = 0
            self._metrics.canary_failures.labels(model).set(0)
            if model in self._alerted:
                self._alerted.discard(model)
                await self._notify(model, "recovered", f"Cellar canary: {model} passes again.", [])
            return
        count = self._failures.get(model, 0) + 1
        self._failures[model] = count
        self._metrics.canary_failures.labels(model).set(count)
        if count >= self.settings.failures_to_alert and model not in self._alerted:
            self._alerted.add(model)
            names = ", ".join(r.prompt for r in failed)
            text = (
                f"Cellar canary: {model} failed {count} runs in a row ({names}): {failed[0].detail}"
            )
            log.error("%s", text)
            await self._notify(model, "failing", text, failed)

    async def _notify(self, model: str, status: str, text: str, failed: list[Result]) -> None:
        body = {
            "text": text,
            "model": model,
            "status": status,
            "consecutive_failures": self._failures.get(model, 0),
            "failures": [asdict(r) for r in failed],
        }
        await notify(self._http, self.settings.webhook, body, "canary")

    def _append(self, results: list[Result]) -> None:
        if not results:
            return
        self._history.parent.mkdir(parents=True, exist_ok=True)
        new = not self._history.exists()
        fd = os.open(self._history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        with os.fdopen(fd, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(asdict(r) for r in results)
