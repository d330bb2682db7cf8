"""`cellar bench compare` on two recorded runs: ratios and cost per million output tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cellar.benchmarks.suite.compare import compare, cost_per_million, parse_costs
from cellar.benchmarks.suite.record import (
    Endpoint,
    Hardware,
    Level,
    LevelMetrics,
    Run,
    Stat,
    WorkloadSpec,
)
from tests.benchmarks.cli import cellar


def level(concurrency: int, tokens_per_s: float, ttft_ms: float, tpot_ms: float) -> Level:
    metrics = LevelMetrics(
        duration_s=10.0,
        completed=10,
        failed=0,
        errors={},
        request_throughput=tokens_per_s / 100,
        output_throughput=tokens_per_s,
        total_token_throughput=tokens_per_s * 2,
        total_input_tokens=1000,
        total_output_tokens=int(tokens_per_s * 10),
        ttft_ms=Stat(mean=ttft_ms, median=ttft_ms, p90=ttft_ms, p99=ttft_ms),
        tpot_ms=Stat(mean=tpot_ms, median=tpot_ms, p90=tpot_ms, p99=tpot_ms),
        itl_ms=Stat(),
        e2el_ms=Stat(median=1000.0),
        mean_in_flight=float(concurrency),
        output_tokens_source="usage",
    )
    return Level(mode="concurrency", value=concurrency, requests=10, metrics=metrics)


def run(label: str, levels: list[Level], gpu: str | None = None) -> Run:
    machine = {
        "cpu_model": "Test CPU",
        "cpu_cores_physical": 8,
        "cpu_cores_logical": 16,
        "ram_bytes": 64 * 2**30,
        "os": "Linux",
        "gpus": [{"name": gpu, "memory_bytes": 80 * 2**30}] if gpu else [],
    }
    return Run(
        label=label,
        started_at=datetime(2026, 11, 23, tzinfo=UTC),
        endpoint=Endpoint(
            base_url="http://x/v1",
            model="m",
            api="completions",
            engine="llamacpp",
            quantization=label,
        ),
        hardware=Hardware(server=machine, server_source="cellar", client=machine),
        workload=WorkloadSpec(dataset="random", seed=0, ignore_eos=True, warmup_requests=0),
        levels=levels,
    )


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, Path]:
    a = run("q8_0", [level(1, 40.0, 100.0, 25.0), level(4, 100.0, 200.0, 40.0)])
    b = run("q4_k_m", [level(1, 80.0, 50.0, 12.5), level(4, 150.0, 300.0, 30.0)], gpu="H100")
    paths = tmp_path / "a.json", tmp_path / "b.json"
    for record, path in zip((a, b), paths, strict=True):
        path.write_text(record.model_dump_json())
    return paths


def test_cost_per_million_output_tokens() -> None:
    # $1/h at 40 tokens/s: 144,000 tokens an hour -> $6.944 per million
    assert cost_per_million(1.0, 40.0) == pytest.approx(1e6 / 144_000)
    assert cost_per_million(1.0, 0.0) is None
    assert parse_costs("2.5", 3) == [2.5, 2.5, 2.5]
    assert parse_costs("1,3", 2) == [1.0, 3.0]
    for bad in ("1,2,3", "cheap", "-1"):
        with pytest.raises(ValueError):
            parse_costs(bad, 2)


def test_ratios_to_the_first_run(recorded: tuple[Path, Path]) -> None:
    from cellar.benchmarks.suite.record import load_run

    tables = compare([load_run(p) for p in recorded], prices=[1.0, 3.0])
    by_title = {t.title: t for t in tables}
    c1 = {row[0]: row[1:] for row in by_title["concurrency 1"].rows}
    assert c1["output tokens/s"] == ["40.0", "80.0 (2.00x)"]
    assert c1["TTFT p50 (ms)"] == ["100.0", "50.0 (0.50x)"]
    assert c1["TPOT p50 (ms)"] == ["25.00", "12.50 (0.50x)"]
    # $1/h at 40 tok/s = 6.94 per million; $3/h at 80 tok/s = 10.42 -> 1.50x
    assert c1["cost per 1M output tokens"] == ["6.94", "10.42 (1.50x)"]
    c4 = {row[0]: row[1:] for row in by_title["concurrency 4"].rows}
    assert c4["output tokens/s"] == ["100.0", "150.0 (1.50x)"]
    assert c4["TTFT p50 (ms)"] == ["200.0", "300.0 (1.50x)"]
    peak = by_title["Peak throughput"].rows
    assert peak[0][1:3] == ["100.0", "c=4"]
    assert peak[1][1:3] == ["150.0 (1.50x)", "c=4"]
    # $1/h at 100 tok/s = 2.78 per million; $3/h at 150 tok/s = 5.56 -> 2.00x
    assert peak[1][4] == "5.56 (2.00x)"


def test_compare_command_writes_markdown_and_plot(
    recorded: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    done = cellar(
        "bench", "compare", *map(str, recorded), "--cost-per-hour", "1,3", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    text = (out / "compare.md").read_text()
    assert "| output tokens/s | 40.0 | 80.0 (2.00x) |" in text
    assert "H100 (80 GiB)" in text
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_compare_names_a_file_that_is_not_a_record(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.json"
    bogus.write_text('{"hello": 1}')
    done = cellar("bench", "compare", str(bogus))
    assert done.returncode == 2
    assert "notes.json" in done.stderr and "not a cellar bench record" in done.stderr
