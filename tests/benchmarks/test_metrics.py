"""Metric arithmetic against values worked out by hand from recorded timings."""

from __future__ import annotations

import pytest

from cellar.benchmarks.suite.metrics import parse_slo, summarize
from cellar.benchmarks.suite.record import RequestResult


def recorded() -> list[RequestResult]:
    """Four requests over a 2 s level, 10 prompt tokens each, 4 output tokens asked."""
    common = {"prompt_tokens": 10, "requested_output_tokens": 4}
    return [
        # 4 tokens: TTFT 100 ms, then 3 gaps of 300 ms -> TPOT (1000 - 100) / 3 = 300 ms
        RequestResult(
            start_s=0.0,
            ttft_s=0.1,
            latency_s=1.0,
            itl_s=[0.3, 0.3, 0.3],
            output_tokens=4,
            output_chunks=4,
            **common,
        ),
        # 3 tokens: TTFT 300 ms, TPOT (700 - 300) / 2 = 200 ms
        RequestResult(
            start_s=0.2,
            ttft_s=0.3,
            latency_s=0.7,
            itl_s=[0.2, 0.2],
            output_tokens=3,
            output_chunks=3,
            **common,
        ),
        # refused by the server
        RequestResult(
            start_s=0.4,
            latency_s=0.05,
            error="http_503:overloaded",
            **common,
        ),
        # 1 token: no TPOT
        RequestResult(
            start_s=1.0,
            ttft_s=0.05,
            latency_s=0.05,
            output_tokens=1,
            output_chunks=1,
            **common,
        ),
    ]


def test_throughputs_and_counts() -> None:
    m = summarize(recorded(), duration_s=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert m.errors == {"http_503:overloaded": 1}
    assert m.request_throughput == pytest.approx(1.5)  # 3 completed / 2 s
    assert m.total_output_tokens == 8  # 4 + 3 + 1
    assert m.output_throughput == pytest.approx(4.0)
    assert m.total_input_tokens == 30  # failed requests' prompts do not count
    assert m.total_token_throughput == pytest.approx(19.0)  # (30 + 8) / 2
    assert m.mean_in_flight == pytest.approx(0.9)  # (1.0 + 0.7 + 0.05 + 0.05) / 2
    assert m.output_tokens_source == "usage"
    assert m.short_outputs == 2  # 3 and 1 tokens of 4 asked
    assert m.output_tokens_mean == pytest.approx(8 / 3)


def test_latency_percentiles() -> None:
    m = summarize(recorded(), duration_s=2.0)
    # TTFT 100, 300, 50 ms. Sorted 50, 100, 300: p90 at rank 1.8 -> 100 + 0.8 * 200 = 260
    assert m.ttft_ms.mean == pytest.approx(150.0)
    assert m.ttft_ms.median == pytest.approx(100.0)
    assert m.ttft_ms.p90 == pytest.approx(260.0)
    assert m.ttft_ms.p99 == pytest.approx(296.0)
    assert m.ttft_ms.max == pytest.approx(300.0)
    # TPOT 300 and 200 ms (the one-token answer has none)
    assert m.tpot_ms.mean == pytest.approx(250.0)
    assert m.tpot_ms.median == pytest.approx(250.0)
    assert m.tpot_ms.p90 == pytest.approx(290.0)
    assert m.tpot_ms.p99 == pytest.approx(299.0)
    # ITL pooled: 300, 300, 300, 200, 200
    assert m.itl_ms.mean == pytest.approx(260.0)
    assert m.itl_ms.median == pytest.approx(300.0)
    # E2E of completed requests: 1000, 700, 50
    assert m.e2el_ms.median == pytest.approx(700.0)
    assert m.e2el_ms.mean == pytest.approx(1750 / 3)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    slo = parse_slo("ttft=250ms,tpot=250ms")
    m = summarize(recorded(), duration_s=2.0, slo_ms=slo)
    # first: TPOT 300 > 250; second: TTFT 300 > 250; the one-token answer passes (TPOT 0)
    assert m.slo_met == 1
    assert m.goodput == pytest.approx(0.5)
    assert summarize(recorded(), 2.0, parse_slo("e2el=1s")).slo_met == 3
    assert summarize(recorded(), 2.0).goodput is None


def test_tokens_counted_from_chunks_without_usage() -> None:
    results = recorded()
    for result in results:
        result.output_tokens = None
    m = summarize(results, duration_s=2.0)
    assert m.output_tokens_source == "chunks"
    assert m.total_output_tokens == 8


def test_nothing_completed() -> None:
    m = summarize([recorded()[2]], duration_s=1.0)
    assert m.completed == 0 and m.ttft_ms.median is None and m.output_tokens_source == "none"


def test_parse_slo() -> None:
    assert parse_slo("ttft=500ms, tpot=0.1s,e2el=10s") == {
        "ttft": 500.0,
        "tpot": 100.0,
        "e2el": 10000.0,
    }
    assert parse_slo("TTFT=20") == {"ttft": 20.0}
    for bad in ("latency=1s", "ttft", "ttft=fast", "ttft=-5ms"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_embedding_throughputs_count_texts_and_tokens() -> None:
    embedded = [
        RequestResult(start_s=0.0, latency_s=0.2, prompt_tokens=300, inputs=32, **NO_OUTPUT),
        RequestResult(start_s=0.1, latency_s=0.3, prompt_tokens=100, inputs=8, **NO_OUTPUT),
        RequestResult(start_s=0.2, latency_s=0.01, error="http_400:x", inputs=0, **NO_OUTPUT),
    ]
    m = summarize(embedded, duration_s=2.0)
    assert (m.completed, m.failed) == (2, 1)
    assert m.input_throughput == pytest.approx(20.0)  # 40 texts / 2 s
    assert m.input_token_throughput == pytest.approx(200.0)  # 400 tokens / 2 s
    assert m.e2el_ms.median == pytest.approx(250.0)
    assert m.ttft_ms.median is None and m.output_throughput == 0


NO_OUTPUT = {"requested_output_tokens": 0, "output_tokens": 0}
