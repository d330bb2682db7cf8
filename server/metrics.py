"""Prometheus metrics of the gateway, named after vLLM's where the meaning matches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80)


STATUS_CLIENT_GONE = 499
"""The status counted for a request whose client went away (nginx's code)."""


@dataclass
class Outcome:
    """One request's entry in `cellar:requests_total` and its end-to-end latency, recorded
    exactly once: by the completion service when it answers or fails, or by the proxy when a
    stream it relays ends. Later calls are ignored, so every way out may call `finish`."""

    metrics: Metrics
    model: str
    started: float
    """time.monotonic() at arrival."""
    status: int | None = None
    observers: list[Callable[[int, float], None]] = field(default_factory=list)
    """Told the status and seconds once it is recorded (a guarded rollout's figures)."""

    def finish(self, status: int) -> None:
        if self.status is None:
            self.status = status
            seconds = time.monotonic() - self.started
            self.metrics._record(self.model, status, seconds)
            for observer in self.observers:
                observer(status, seconds)


class Metrics:
    """All gateway metrics on one registry of their own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.requests = Counter(
            "cellar:requests",
            "Requests answered, by model and HTTP status.",
            ["model_name", "status"],
            registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "cellar:e2e_request_latency_seconds",
            "Time from request arrival to the last byte of the answer.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "cellar:time_to_first_token_seconds",
            "Time from request arrival to the first streamed token (streamed requests).",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "cellar:prompt_tokens", "Prompt tokens processed.", labels, registry=self.registry
        )
        self.cached_prompt_tokens = Counter(
            "cellar:prompt_tokens_cached",
            "Prompt tokens whose KV was reused from an earlier request (prefix cache hits).",
            labels,
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "cellar:generation_tokens", "Tokens generated.", labels, registry=self.registry
        )
        self.running = Gauge(
            "cellar:num_requests_running",
            "Requests the engine is generating for now.",
            labels,
            registry=self.registry,
        )
        self.waiting = Gauge(
            "cellar:num_requests_waiting",
            "Requests queued in front of the engine.",
            labels,
            registry=self.registry,
        )

        self.model_state = Gauge(
            "cellar:model_state",
            "1 for the state each deployment is in, 0 for the others.",
            ["model_name", "state"],
            registry=self.registry,
        )
        self.load_duration = Histogram(
            "cellar:model_load_duration_seconds",
            "Time to load and warm up a model, until it is ready.",
            labels,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.restarts = Counter(
            "cellar:model_restarts",
            "Workers found dead (crash, kill, failed health checks).",
            labels,
            registry=self.registry,
        )

        self.rollout_share = Gauge(
            "cellar:rollout_share",
            "Percent of the model's callers each version serves during a guarded rollout.",
            ["model_name", "version"],
            registry=self.registry,
        )
        self.version_requests = Counter(
            "cellar:version_requests",
            "Requests answered, by model, stored version (NAME@K) and HTTP status.",
            ["model_name", "version", "status"],
            registry=self.registry,
        )
        self.drift_score = Gauge(
            "cellar:drift_score",
            "Population stability index of a feature of the model's traffic, the recent window "
            "against the baseline (drift.interval; above 0.25 reads as drift).",
            ["model_name", "feature"],
            registry=self.registry,
        )
        self.batch_requests = Gauge(
            "cellar:batch_requests",
            "Requests of unfinished batches, queued or running, by batch priority.",
            ["priority", "state"],
            registry=self.registry,
        )
        self.batch_done = Counter(
            "cellar:batch_requests_finished",
            "Batch requests answered, completed (2xx) or failed, by batch priority.",
            ["priority", "outcome"],
            registry=self.registry,
        )
        self.batch_oldest_age = Gauge(
            "cellar:batch_oldest_queued_age_seconds",
            "Age of the oldest batch with requests still queued (0: none).",
            registry=self.registry,
        )

        prompt = ["model_name", "prompt"]
        self.canary_passed = Gauge(
            "cellar:canary_passed",
            "1 when the golden prompt's last canary run passed, 0 when it failed.",
            prompt,
            registry=self.registry,
        )
        self.canary_latency = Gauge(
            "cellar:canary_latency_seconds",
            "Latency of the golden prompt's last canary run.",
            prompt,
            registry=self.registry,
        )
        self.canary_failures = Gauge(
            "cellar:canary_consecutive_failures",
            "Canary runs in a row in which some golden prompt of the model failed.",
            labels,
            registry=self.registry,
        )
        self._audit_counted = 0
        self.audit_lines_dropped = Counter(
            "cellar:audit_lines_dropped",
            "Audit lines lost: the disk refused them, or the writer's queue was full.",
            registry=self.registry,
        )
        self.loop_stalls = Counter(
            "cellar:event_loop_stalls",
            "Times the gateway's event loop did not run for 10 s or more (every request waited).",
            registry=self.registry,
        )
        self.canary_last_run = Gauge(
            "cellar:canary_last_run_timestamp_seconds",
            "When the model's canary last ran (Unix time).",
            labels,
            registry=self.registry,
        )

    def audit_dropped(self, total: int) -> None:
        """Bring `cellar:audit_lines_dropped_total` up to the audit writer's own count."""
        if total > self._audit_counted:
            self.audit_lines_dropped.inc(total - self._audit_counted)
            self._audit_counted = total

    def outcome(self, model: str, started: float) -> Outcome:
        """The one place a request is counted: see Outcome."""
        return Outcome(self, model, started)

    def _record(self, model: str, status: int, latency_s: float) -> None:
        self.requests.labels(model, str(status)).inc()
        self.e2e_latency.labels(model).observe(latency_s)

    def record_usage(self, model: str, usage: dict[str, object] | None) -> None:
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens.labels(model).inc(prompt)
        if isinstance(completion, int):
            self.generation_tokens.labels(model).inc(completion)
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if isinstance(cached, int):
            self.cached_prompt_tokens.labels(model).inc(cached)

    def set_load(self, model: str, running: int, waiting: int) -> None:
        self.running.labels(model).set(running)
        self.waiting.labels(model).set(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)
