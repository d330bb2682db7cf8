"""Serving metrics with the field's definitions (those of `vllm bench serve`).

- TTFT: from sending a request to its first content chunk.
- TPOT: (latency - TTFT) / (output tokens - 1), for requests with more than one output token.
- ITL: every gap between consecutive content chunks, pooled over all requests.
- E2EL: from sending a request to its last byte.
- Throughputs: completed requests, output tokens and prompt + output tokens per second of the
  level's wall time (first request sent to last one finished); for embeddings, texts embedded
  and prompt tokens per second.
- Goodput: requests per second that met every SLO given (a one-token answer has TPOT 0).
Percentiles interpolate linearly between samples (numpy's default).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from cellar.benchmarks.suite.record import LevelMetrics, RequestResult, Stat, TokenSource

SLO_KEYS = ("ttft", "tpot", "e2el")


def stat_ms(seconds: Iterable[float]) -> Stat:
    values = np.asarray(list(seconds), dtype=float) * 1000.0
    if values.size == 0:
        return Stat()
    return Stat(
        mean=float(values.mean()),
        median=float(np.median(values)),
        p90=float(np.percentile(values, 90)),
        p99=float(np.percentile(values, 99)),
        std=float(values.std()),
        max=float(values.max()),
    )


def tpot_s(result: RequestResult) -> float | None:
    """Time per output token after the first; None when it is undefined."""
    if result.ttft_s is None or result.latency_s is None or result.generated <= 1:
        return None
    return (result.latency_s - result.ttft_s) / (result.generated - 1)


def meets(result: RequestResult, slo_ms: Mapping[str, float]) -> bool:
    """Whether a successful request met every SLO (milliseconds, keys from SLO_KEYS)."""
    measured = {
        "ttft": result.ttft_s,
        "tpot": tpot_s(result) or 0.0,
        "e2el": result.latency_s,
    }
    for key, limit in slo_ms.items():
        value = measured[key]
        if value is None or value * 1000.0 > limit:
            return False
    return True


def _token_source(ok: list[RequestResult]) -> TokenSource:
    with_usage = sum(r.output_tokens is not None for r in ok)
    if not ok:
        return "none"
    if with_usage == len(ok):
        return "usage"
    return "chunks" if with_usage == 0 else "mixed"


def summarize(
    results: list[RequestResult], duration_s: float, slo_ms: Mapping[str, float] | None = None
) -> LevelMetrics:
    ok = [r for r in results if r.ok]
    errors = Counter(r.error for r in results if r.error is not None)
    duration = max(duration_s, 1e-9)
    total_in = sum(r.prompt_tokens or 0 for r in ok)
    total_out = sum(r.generated for r in ok)
    busy = sum(r.latency_s or 0.0 for r in results)
    good = sum(meets(r, slo_ms) for r in ok) if slo_ms else None
    return LevelMetrics(
        duration_s=duration_s,
        completed=len(ok),
        failed=len(results) - len(ok),
        errors=dict(sorted(errors.items())),
        request_throughput=len(ok) / duration,
        output_throughput=total_out / duration,
        total_token_throughput=(total_in + total_out) / duration,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        input_throughput=sum(r.inputs for r in ok) / duration,
        input_token_throughput=total_in / duration,
        ttft_ms=stat_ms(r.ttft_s for r in ok if r.ttft_s is not None),
        tpot_ms=stat_ms(t for r in ok if (t := tpot_s(r)) is not None),
        itl_ms=stat_ms(gap for r in ok for gap in r.itl_s),
        e2el_ms=stat_ms(r.latency_s for r in ok if r.latency_s is not None),
        mean_in_flight=busy / duration,
        goodput=None if good is None else good / duration,
        slo_met=good,
        output_tokens_source=_token_source(ok),
        requested_output_tokens_mean=(
            float(np.mean([r.requested_output_tokens for r in ok])) if ok else None
        ),
        output_tokens_mean=float(np.mean([r.generated for r in ok])) if ok else None,
        short_outputs=sum(r.generated < r.requested_output_tokens for r in ok),
    )


def parse_slo(text: str) -> dict[str, float]:
    """`ttft=500ms,tpot=100ms,e2el=10s` -> {"ttft": 500.0, "tpot": 100.0, "e2el": 10000.0}."""
    slo: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"{part!r}: expected KEY=TIME with KEY one of {', '.join(SLO_KEYS)}")
        slo[key] = _milliseconds(value.strip())
    return slo


def _milliseconds(value: str) -> float:
    scale = 1000.0 if value.endswith("s") and not value.endswith("ms") else 1.0
    try:
        parsed = float(value.removesuffix("ms").removesuffix("s")) * scale
    except ValueError:
        raise ValueError(f"{value!r}: expected a time such as 500ms or 2s") from None
    if parsed <= 0:
        raise ValueError(f"{value!r}: must be positive")
    return parsed
