"""`cellar bench compare`: runs from different machines, engines or quantizations side by side.

Levels are matched by load (mode and value). Every figure of a later run carries its ratio to
the first run's. Given a price per hour for each machine, each level also gets its cost per
million output tokens: price / (output tokens/s x 3600) x 1e6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cellar.benchmarks.suite.record import LevelMetrics, Mode, Run
from cellar.benchmarks.suite.report import describe_machine

Getter = Callable[[LevelMetrics], float | None]


@dataclass(frozen=True)
class Metric:
    name: str
    get: Getter
    digits: int


METRICS = (
    Metric("output tokens/s", lambda m: m.output_throughput, 1),
    Metric("requests/s", lambda m: m.request_throughput, 3),
    Metric("TTFT p50 (ms)", lambda m: m.ttft_ms.median, 1),
    Metric("TTFT p99 (ms)", lambda m: m.ttft_ms.p99, 1),
    Metric("TPOT p50 (ms)", lambda m: m.tpot_ms.median, 2),
    Metric("ITL p50 (ms)", lambda m: m.itl_ms.median, 2),
    Metric("E2E p50 (ms)", lambda m: m.e2el_ms.median, 0),
    Metric("goodput (req/s)", lambda m: m.goodput, 3),
)
COST = "cost per 1M output tokens"


def cost_per_million(price_per_hour: float, output_throughput: float) -> float | None:
    if output_throughput <= 0:
        return None
    return price_per_hour / (output_throughput * 3600) * 1e6


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


@dataclass(frozen=True)
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


def _cell(value: float | None, base: float | None, digits: int, first: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    r = None if first else ratio(value, base)
    return text if r is None else f"{text} ({r:.2f}x)"


def parse_costs(text: str | None, runs: int) -> list[float] | None:
    """`2.5` (every run) or `2.5,4,1.2` (one per run, in order)."""
    if not text:
        return None
    try:
        prices = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--cost-per-hour {text!r}: expected numbers separated by commas"
        ) from None
    if len(prices) == 1:
        prices *= runs
    if len(prices) != runs:
        raise ValueError(f"--cost-per-hour: {len(prices)} prices for {runs} runs")
    if any(p < 0 for p in prices):
        raise ValueError("--cost-per-hour: prices cannot be negative")
    return prices


def _level_keys(runs: list[Run]) -> list[tuple[Mode, float]]:
    keys = {(lv.mode, lv.value) for run in runs for lv in run.levels if lv.metrics is not None}
    return sorted(keys, key=lambda k: (k[0] != "concurrency", k[1]))


def _metrics_at(run: Run, key: tuple[Mode, float]) -> LevelMetrics | None:
    for level in run.levels:
        if (level.mode, level.value) == key and level.metrics is not None:
            return level.metrics
    return None


def _label(key: tuple[Mode, float]) -> str:
    mode, value = key
    return f"concurrency {value:g}" if mode == "concurrency" else f"{value:.3g} requests/s"


def compare(runs: list[Run], prices: list[float] | None = None) -> list[Table]:
    """The comparison as tables: the runs, the peak of each, and one table per load level."""
    names = [run.label for run in runs]
    overview = Table(
        "Runs",
        ["run", "server machine", "engine", "quantization", "model sha256", "date"],
        [
            [
                run.label,
                describe_machine(run.hardware.server),
                f"{run.endpoint.engine or '?'} {run.endpoint.engine_version or ''}".strip(),
                run.endpoint.quantization or "?",
                (run.endpoint.model_sha256 or "?")[:12],
                f"{run.started_at:%Y-%m-%d %H:%M}",
            ]
            for run in runs
        ],
    )
    tables = [overview, _peak_table(runs, prices)]
    for key in _level_keys(runs):
        found = [_metrics_at(run, key) for run in runs]
        base = found[0]
        rows = []
        for metric in METRICS:
            values = [None if m is None else metric.get(m) for m in found]
            if all(v is None for v in values):
                continue
            first = None if base is None else metric.get(base)
            rows.append(
                [metric.name]
                + [_cell(v, first, metric.digits, i == 0) for i, v in enumerate(values)]
            )
        if prices is not None:
            costs = [
                None if m is None else cost_per_million(p, m.output_throughput)
                for m, p in zip(found, prices, strict=True)
            ]
            rows.append([COST] + [_cell(c, costs[0], 2, i == 0) for i, c in enumerate(costs)])
        tables.append(Table(_label(key), ["metric", *names], rows))
    return tables


def _peak_table(runs: list[Run], prices: list[float] | None) -> Table:
    peaks = []
    for run in runs:
        best = max(
            (lv for lv in run.levels if lv.metrics is not None),
            key=lambda lv: lv.metrics.output_throughput if lv.metrics else 0.0,
            default=None,
        )
        peaks.append(best)
    base = peaks[0].metrics.output_throughput if peaks[0] and peaks[0].metrics else None
    headers = ["run", "peak output tokens/s", "at"]
    if prices is not None:
        headers += ["price per hour", COST]
    rows = []
    base_cost = None
    for i, (run, best) in enumerate(zip(runs, peaks, strict=True)):
        value = best.metrics.output_throughput if best and best.metrics else None
        row = [run.label, _cell(value, base, 1, i == 0), best.label if best else "-"]
        if prices is not None:
            cost = None if value is None else cost_per_million(prices[i], value)
            base_cost = cost if i == 0 else base_cost
            row += [f"{prices[i]:,.2f}", _cell(cost, base_cost, 2, i == 0)]
        rows.append(row)
    return Table("Peak throughput", headers, rows)


def markdown(tables: list[Table], runs: list[Path]) -> str:
    lines = ["# cellar bench compare", ""]
    lines += [f"Ratios are to the first run ({runs[0].name})." if runs else "", ""]
    for table in tables:
        lines += [f"## {table.title}", ""]
        lines.append("| " + " | ".join(table.headers) + " |")
        lines.append("|" + "|".join("---" for _ in table.headers) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines.append("")
    return "\n".join(lines)


def write_plot(runs: list[Run], path: Path) -> Path | None:
    """Output throughput and TTFT p50 against load for every run, one column per load mode."""
    from cellar.benchmarks.suite.plots import DPI, X_LABELS, plt

    modes = [m for m in ("concurrency", "rate") if any(k[0] == m for k in _level_keys(runs))]
    if not modes:
        return None
    fig, axes = plt.subplots(2, len(modes), figsize=(7 * len(modes), 8), squeeze=False)
    for column, mode in enumerate(modes):
        top, bottom = axes[0][column], axes[1][column]
        for run in runs:
            levels = sorted(
                (lv for lv in run.levels if lv.mode == mode and lv.metrics is not None),
                key=lambda lv: lv.value,
            )
            xs = [lv.value for lv in levels]
            top.plot(
                xs,
                [lv.metrics.output_throughput for lv in levels if lv.metrics],
                "o-",
                label=run.label,
            )
            ttft = [lv.metrics.ttft_ms.median for lv in levels if lv.metrics]
            bottom.plot(xs, [float("nan") if t is None else t for t in ttft], "o-", label=run.label)
        top.set_ylabel("output throughput (tokens/s)")
        bottom.set_ylabel("TTFT p50 (ms)")
        for ax in (top, bottom):
            ax.set_xlabel(X_LABELS[mode])  # type: ignore[index]
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best")
    fig.suptitle("cellar bench compare")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
