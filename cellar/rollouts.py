"""Guarded rollouts: what a gradual promotion is asked to do, what it measures on each version,
and how a step is judged. The gateway runs them (server/guarded.py); this is the pure part.

A step sends `share`% of the traffic to the candidate (sticky per `user`, or per API key, so a
conversation stays on one version), then compares the two versions over the step:

- error rate (HTTP 5xx and broken streams): at most `max_error_rate_increase` points worse;
- p90 end-to-end latency and p90 time to first token: at most `max_latency_increase` worse;
- tokens per second per request (the median): at most `max_throughput_decrease` worse;

(these timings are judged by a bootstrap interval of the candidate's figure over the current
one's: worse only when the whole 80% interval is beyond the bound, so that a few slow requests
on a busy machine do not roll back a good version);
- the share of answers cut off at `max_tokens` (finish reason `length`): at most
  `max_length_finish_increase` points worse;
- the mean answer length: within `max_length_change` of the current version's;
- the canary's golden prompts, run against the candidate: all must pass;
- the deployment's live checks (a regex or JSON schema every answer must meet): at most
  `max_check_failure_increase` points worse.

A figure is compared only when both versions answered `min_requests` in the step (a step runs
on, up to three times its length, until they have); the golden prompts are judged whatever the
traffic.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator
from scipy import stats

from cellar.config_types import Duration, Strict

CURRENT, CANDIDATE = "current", "candidate"


class RolloutBounds(Strict):
    """How much worse than the current version a candidate may be at a step."""

    max_error_rate_increase: float = Field(0.01, ge=0, le=1, description="In points (0.01 = 1).")
    max_latency_increase: float = Field(
        0.25, ge=0, description="p90 end-to-end latency and p90 TTFT, relative (0.25 = +25%)."
    )
    max_throughput_decrease: float = Field(
        0.25, ge=0, le=1, description="Median tokens/s of a request, relative."
    )
    max_length_finish_increase: float = Field(
        0.1, ge=0, le=1, description="Share of answers cut off at max_tokens, in points."
    )
    max_length_change: float = Field(
        0.5, ge=0, description="Mean completion tokens, relative, either way."
    )
    max_check_failure_increase: float = Field(0.0, ge=0, le=1, description="Live checks.")
    canary: bool = Field(True, description="The golden prompts must all pass on the candidate.")
    min_requests: int = Field(
        20,
        ge=1,
        description="Requests each version must answer in a step for its figures to count (a "
        "step runs up to three times its length to get them).",
    )


class LiveCheck(Strict):
    """A check every live answer of the model must pass (a regex, or a JSON schema)."""

    regex: str | None = None
    json_schema: dict[str, Any] | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def failure(self, text: str) -> str | None:
        if self.regex is not None and not re.search(self.regex, text):
            return f"does not match {self.regex!r}"
        if self.json_schema is not None:
            try:
                jsonschema.validate(json.loads(text), self.json_schema)
            except (ValueError, jsonschema.ValidationError) as exc:
                return f"not valid JSON for the schema: {str(exc).splitlines()[0][:120]}"
        return None


class RolloutPlan(Strict):
    """A gradual promotion of `to_tag` to the version `from_tag` holds."""

    steps: list[int] = Field(
        default_factory=lambda: [10, 50, 100],
        description="Percent of the traffic the candidate gets at each step; the last is 100. "
        "None (with `shadow`): a shadow run of one step that promotes nothing.",
    )
    step: Duration = Field(600, gt=0, description="How long each step lasts.")
    shadow: int = Field(
        0, ge=0, le=100, description="Percent of requests also sent to the candidate, unanswered."
    )
    bounds: RolloutBounds = Field(default_factory=RolloutBounds)
    checks: list[LiveCheck] = Field(default_factory=list, description="Checks on live answers.")

    @field_validator("steps")
    @classmethod
    def _rising_to_100(cls, steps: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps are rising percentages, e.g. 10,50,100")
        if steps and steps[-1] != 100:
            raise ValueError("the last step is 100 (the candidate takes all the traffic)")
        return steps

    @model_validator(mode="after")
    def _something_to_do(self) -> RolloutPlan:
        if not self.steps and not self.shadow:
            raise ValueError("give steps (e.g. 10,50,100), or a shadow share, or both")
        return self


def bucket(salt: str, sticky: str) -> float:
    """Where a caller falls in [0, 100): the candidate serves those below the step's share, so a
    caller it serves at 10% it still serves at 50%."""
    digest = hashlib.sha256(f"{salt}\0{sticky}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass
class Answer:
    """What one request showed."""

    status: int
    seconds: float
    ttft_s: float | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    check_failure: str | None = None


@dataclass
class ArmStats:
    """One version's answers during one step."""

    answers: list[Answer] = field(default_factory=list)

    def add(self, answer: Answer) -> None:
        self.answers.append(answer)

    @property
    def requests(self) -> int:
        return len(self.answers)

    def figures(self) -> dict[str, float | None]:
        done = [a for a in self.answers if a.status < 400]
        failed = [a for a in self.answers if a.status >= 500]
        tokens = [a.completion_tokens for a in done if a.completion_tokens is not None]
        rates = [
            a.completion_tokens / a.seconds for a in done if a.completion_tokens and a.seconds > 0
        ]
        ttfts = [a.ttft_s for a in done if a.ttft_s is not None]
        return {
            "requests": float(self.requests),
            "error_rate": len(failed) / self.requests if self.requests else None,
            "p50_e2e_s": _percentile([a.seconds for a in done], 50),
            "p90_e2e_s": _percentile([a.seconds for a in done], 90),
            "p90_ttft_s": _percentile(ttfts, 90),
            "tokens_per_s": _percentile(rates, 50),
            "mean_completion_tokens": float(np.mean(tokens)) if tokens else None,
            "length_finish_share": (
                sum(a.finish_reason == "length" for a in done) / len(done) if done else None
            ),
            "check_failure_rate": (
                sum(a.check_failure is not None for a in done) / len(done) if done else None
            ),
        }

    def samples(self, key: str) -> list[float]:
        """One request figure over the step's answered requests: e2e_s, ttft_s, tokens_per_s."""
        done = [a for a in self.answers if a.status < 400]
        if key == "e2e_s":
            return [a.seconds for a in done]
        if key == "ttft_s":
            return [a.ttft_s for a in done if a.ttft_s is not None]
        return [
            a.completion_tokens / a.seconds for a in done if a.completion_tokens and a.seconds > 0
        ]

    def finish_reasons(self) -> dict[str, int]:
        return dict(Counter(a.finish_reason or "none" for a in self.answers))


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ratio_bounds(old: list[float], new: list[float], q: float) -> tuple[float, float]:
    """An 80% bootstrap interval of (new's q-th percentile) / (old's): each end is a one-sided
    90% bound. A tail percentile of a few dozen requests swings widely on a busy machine; a
    candidate is held to be worse only when the whole interval says so."""

    def ratio(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        below = np.percentile(x, q, axis=axis)
        return np.asarray(np.percentile(y, q, axis=axis) / np.maximum(below, 1e-9))

    with warnings.catch_warnings():  # identical samples: a degenerate interval, said as such
        warnings.simplefilter("ignore")
        found = stats.bootstrap(
            (np.asarray(old), np.asarray(new)),
            ratio,
            vectorized=True,
            paired=False,
            confidence_level=0.8,
            n_resamples=999,
            method="percentile",
            rng=np.random.default_rng(0),
        )
    low, high = found.confidence_interval
    return float(low), float(high)


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    """Why it failed (empty when it passed)."""
    compared: list[str]
    """Each figure compared, current -> candidate, for the history."""


def _relative(name: str, unit: str, old: float, new: float) -> str:
    change = (new - old) / old * 100 if old else 0.0
    return f"{name} {change:+.0f}% ({old:.3g} {unit} -> {new:.3g} {unit})"


def _points(name: str, old: float, new: float) -> str:
    return f"{name} {(new - old) * 100:+.1f} points ({old:.1%} -> {new:.1%})"


def judge(
    current: ArmStats, candidate: ArmStats, bounds: RolloutBounds, canary_failures: list[str]
) -> Verdict:
    """The candidate against the current version over one step."""
    reasons: list[str] = []
    compared: list[str] = []
    if bounds.canary and canary_failures:
        reasons.append("golden prompts failed: " + "; ".join(canary_failures))
    enough = min(current.requests, candidate.requests) >= bounds.min_requests
    if not enough:
        compared.append(
            f"too few requests to compare live figures ({current.requests} current, "
            f"{candidate.requests} candidate; {bounds.min_requests} each needed)"
        )
        return Verdict(not reasons, reasons, compared)
    old, new = current.figures(), candidate.figures()

    def check(text: str, worse: bool) -> None:
        compared.append(text)
        if worse:
            reasons.append(text)

    points = (
        ("error rate", "error_rate", bounds.max_error_rate_increase),
        ("cut off at max_tokens", "length_finish_share", bounds.max_length_finish_increase),
        ("live checks failing", "check_failure_rate", bounds.max_check_failure_increase),
    )
    for label, key, bound in points:
        a, b = old[key], new[key]
        if a is not None and b is not None:
            check(_points(label, a, b), b - a > bound + 1e-9)
    a, b = old["p50_e2e_s"], new["p50_e2e_s"]
    if a is not None and b is not None and a > 0:
        compared.append(_relative("p50 e2e", "s", a, b))  # shown, not judged
    timed = (
        ("p90 e2e", "e2e_s", 90, "s", 1 + bounds.max_latency_increase),
        ("p90 TTFT", "ttft_s", 90, "s", 1 + bounds.max_latency_increase),
        ("median tokens/s", "tokens_per_s", 50, "tok/s", 1 - bounds.max_throughput_decrease),
    )
    for label, key, q, unit, limit in timed:
        xs, ys = current.samples(key), candidate.samples(key)
        if min(len(xs), len(ys)) < bounds.min_requests:
            continue
        x, y = float(np.percentile(xs, q)), float(np.percentile(ys, q))
        low, high = ratio_bounds(xs, ys, q)
        slower = limit > 1  # a figure that grows when worse (latency), or shrinks (tokens/s)
        text = _relative(label, unit, x, y) + f" (90% bound x{low if slower else high:.2f})"
        check(text, low > limit if slower else high < limit)
    a, b = old["mean_completion_tokens"], new["mean_completion_tokens"]
    if a is not None and b is not None and a > 0:
        check(
            _relative("mean answer length", "tokens", a, b),
            abs(b - a) > a * bounds.max_length_change,
        )
    return Verdict(not reasons, reasons, compared)


class RolloutSettings(RolloutPlan):
    """A deployment's `rollout:` block: when the tag `from` moves to another version than the
    deployment's source tag holds, the gateway rolls it out by itself, with this plan."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_tag: str = Field(alias="from", description="The tag whose new versions are rolled out.")

    def plan(self) -> RolloutPlan:
        return RolloutPlan.model_validate(self.model_dump(exclude={"from_tag"}))
