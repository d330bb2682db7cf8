"""Drift: how a model's recent traffic differs from a baseline, feature by feature, read from the
audit log (which keeps no text: counts, timings, finish reasons, the scripts of the prompt and
the answer; see server/audit.py).

Every feature gets the population stability index (PSI) of the window against the baseline:
categories as they are, numbers in bins cut at the baseline's quantiles: ten, or fewer for
small samples (two samples of one population score about (bins - 1) * (1/n1 + 1/n2) by chance,
and the bins keep that under 0.05). PSI is the one score (the `cellar:drift_score` gauge);
under 0.1 is stable, 0.1-0.25 moderate, above 0.25 drift, as credit-risk practice reads it.
Beside it, a two-sample test: Kolmogorov-Smirnov for numbers, chi-square for categories
(scipy): a PSI whose p-value is `SIGNIFICANCE` or more could be chance, and is not called
drift. A feature needs `MIN_REQUESTS` in both windows to be judged.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from scipy import stats

from cellar.features import script_label

MIN_REQUESTS = 20
STABLE, MODERATE = 0.1, 0.25
BINS = 10
CHANCE_PSI = 0.05
SIGNIFICANCE = 0.01
_EPSILON = 1e-4
"""Stands in for an empty bin's share (PSI takes its logarithm)."""

Kind = Literal["categorical", "continuous"]


def _status(line: dict[str, Any]) -> str:
    status = int(line.get("status") or 0)
    if status < 400:
        return "ok"
    return str(line.get("error") or status)


CATEGORICAL: dict[str, Any] = {
    "prompt_script": lambda line: script_label(line.get("prompt_script")),
    "answer_script": lambda line: script_label(line.get("answer_script")),
    "finish_reason": lambda line: str(line.get("finish_reason") or "none"),
    "status": _status,
    "response_format": lambda line: str(line.get("response_format") or "none"),
    "tools": lambda line: "tools" if line.get("tools") else "none",
}
CONTINUOUS = ("prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms")
FEATURES = (*CATEGORICAL, *CONTINUOUS)
_GENERATION = ("/completions", "/responses")
_KEPT = ("status", "error", "finish_reason", "response_format", "tools", *CONTINUOUS)
MAX_SAMPLE = 50_000


@dataclass
class FeatureDrift:
    feature: str
    kind: Kind
    psi: float | None
    """None when either window has too few requests."""
    test: str
    p_value: float | None
    baseline: list[Any] = field(repr=False)
    window: list[Any] = field(repr=False)

    @property
    def significant(self) -> bool:
        """Whether the test says the difference is unlikely to be chance."""
        return self.p_value is not None and self.p_value < SIGNIFICANCE

    @property
    def verdict(self) -> str:
        if self.psi is None:
            return f"too few requests (need {MIN_REQUESTS} in each window)"
        if self.psi < STABLE:
            return "stable"
        if not self.significant:
            return f"stable (PSI {self.psi:.2f}, but p = {self.p_value:.2g}: could be chance)"
        return "moderate drift" if self.psi < MODERATE else "drift"

    def drifted(self, threshold: float) -> bool:
        return self.psi is not None and self.psi > threshold and self.significant

    def summary(self, values: list[Any]) -> str:
        """A one-line description of one window's values."""
        if not values:
            return "-"
        if self.kind == "continuous":
            return f"median {np.median(values):g}, p90 {np.percentile(values, 90):g}"
        top = Counter(values).most_common(3)
        return ", ".join(f"{name} {count / len(values):.0%}" for name, count in top)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
    p = np.maximum(expected / expected.sum(), _EPSILON)
    q = np.maximum(actual / actual.sum(), _EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def _categorical(feature: str, baseline: list[str], window: list[str]) -> FeatureDrift:
    result = FeatureDrift(feature, "categorical", None, "chi-square", None, baseline, window)
    if len(baseline) < MIN_REQUESTS or len(window) < MIN_REQUESTS:
        return result
    categories = sorted(set(baseline) | set(window))
    base = np.array([baseline.count(c) for c in categories], dtype=float)
    seen = np.array([window.count(c) for c in categories], dtype=float)
    result.psi = psi(base, seen)
    if len(categories) > 1:
        result.p_value = float(stats.chi2_contingency(np.vstack([base, seen]))[1])
    else:
        result.p_value = 1.0
    return result


def _continuous(feature: str, baseline: list[float], window: list[float]) -> FeatureDrift:
    result = FeatureDrift(feature, "continuous", None, "Kolmogorov-Smirnov", None, baseline, window)
    if len(baseline) < MIN_REQUESTS or len(window) < MIN_REQUESTS:
        return result
    bins = int(1 + CHANCE_PSI / (1 / len(baseline) + 1 / len(window)))
    bins = min(BINS, max(2, bins))
    # bins (-inf, q1], (q1, q2], ..., (qk, inf): a baseline of one value still splits from a
    # window above it
    inner = np.unique(np.percentile(baseline, np.linspace(0, 100, bins + 1)[1:-1]))
    base = np.bincount(np.searchsorted(inner, baseline), minlength=len(inner) + 1)
    seen = np.bincount(np.searchsorted(inner, window), minlength=len(inner) + 1)
    result.psi = psi(base.astype(float), seen.astype(float))
    result.p_value = float(stats.ks_2samp(baseline, window).pvalue)
    return result


def values(lines: Iterable[dict[str, Any]], feature: str) -> list[Any]:
    """One feature's values over audit lines (numbers that were not recorded are left out)."""
    if feature in CATEGORICAL:
        return [CATEGORICAL[feature](line) for line in lines]
    found = []
    for line in lines:
        value = line.get(feature)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append(float(value))
    return found


def compare(baseline: list[dict[str, Any]], window: list[dict[str, Any]]) -> list[FeatureDrift]:
    """Every feature, the window against the baseline."""
    results = []
    for feature in CATEGORICAL:
        results.append(_categorical(feature, values(baseline, feature), values(window, feature)))
    for feature in CONTINUOUS:
        results.append(_continuous(feature, values(baseline, feature), values(window, feature)))
    return results


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime

    def holds(self, when: datetime) -> bool:
        return self.start <= when < self.end

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} - {self.end:%Y-%m-%d %H:%M} UTC"


@dataclass
class Sample:
    """A window's requests of one model, slimmed to the features; at most `MAX_SAMPLE` kept
    (a uniform reservoir sample beyond that), so a busy week costs bounded memory."""

    seen: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: dict[str, Any], rng: random.Random) -> None:
        self.seen += 1
        slim = {key: line.get(key) for key in _KEPT}
        for key in ("prompt_script", "answer_script"):  # a label, not the mix
            slim[key] = {script_label(line.get(key)): 1.0} if line.get(key) else None
        if len(self.lines) < MAX_SAMPLE:
            self.lines.append(slim)
        elif (slot := rng.randrange(self.seen)) < MAX_SAMPLE:
            self.lines[slot] = slim


def split_lines(
    lines: Iterable[dict[str, Any]], spans: tuple[Span, Span], models: set[str] | None = None
) -> dict[str, tuple[Sample, Sample]]:
    """Per model (all, or `models`), its generation requests in the baseline and the window,
    by the audit line's time."""
    found: dict[str, tuple[Sample, Sample]] = {}
    rng = random.Random(0)
    for line in lines:
        model = line.get("model")
        if not isinstance(model, str) or (models is not None and model not in models):
            continue
        if not str(line.get("path", "")).endswith(_GENERATION):
            continue
        when = datetime.fromisoformat(line["time"])
        for index, span in enumerate(spans):
            if span.holds(when):
                found.setdefault(model, (Sample(), Sample()))[index].add(line, rng)
    return found
