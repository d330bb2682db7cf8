"""PNG plots of a run: throughput against load, latency percentiles against load, and the
latency-throughput curve. One panel per load mode (fixed concurrency, Poisson rate)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from cellar.benchmarks.suite.record import Level, Mode, Run

X_LABELS: dict[Mode, str] = {
    "concurrency": "concurrency (requests in flight)",
    "rate": "offered load (requests/s, Poisson)",
}
_PERCENTILES = (("median", "p50", "-"), ("p90", "p90", "--"), ("p99", "p99", ":"))
DPI = 110


def _by_mode(run: Run) -> dict[Mode, list[Level]]:
    modes: dict[Mode, list[Level]] = {}
    for level in run.levels:
        if level.metrics is not None and level.metrics.completed:
            modes.setdefault(level.mode, []).append(level)
    for levels in modes.values():
        levels.sort(key=lambda lv: lv.value)
    return modes


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _throughput(ax: Axes, mode: Mode, levels: list[Level]) -> None:
    """Output and total tokens/s; each point labelled with its completed requests/s."""
    xs = [lv.value for lv in levels]
    done = [lv.metrics for lv in levels if lv.metrics is not None]
    ax.plot(xs, [m.output_throughput for m in done], "o-", label="output tokens/s")
    ax.plot(xs, [m.total_token_throughput for m in done], "s--", label="prompt + output tokens/s")
    for x, m in zip(xs, done, strict=True):
        ax.annotate(
            f"{m.request_throughput:.2f} req/s",
            (x, m.output_throughput),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    ax.set_xlabel(X_LABELS[mode])
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")


def _percentiles(ax: Axes, mode: Mode, levels: list[Level], metric: str, title: str) -> None:
    xs = [lv.value for lv in levels]
    for key, name, style in _PERCENTILES:
        ys = [getattr(getattr(lv.metrics, metric), key) for lv in levels]
        ax.plot(xs, [float("nan") if y is None else y for y in ys], "o" + style, label=name)
    ax.set_title(title)
    ax.set_xlabel(X_LABELS[mode])
    ax.set_ylabel("milliseconds")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")


def _curve(ax: Axes, modes: dict[Mode, list[Level]]) -> None:
    for mode, levels in modes.items():
        xs = [lv.metrics.output_throughput for lv in levels if lv.metrics]
        for key, name, style in _PERCENTILES[:2]:
            ys = [getattr(lv.metrics.e2el_ms, key) or float("nan") for lv in levels if lv.metrics]
            ax.plot(xs, [y / 1000 for y in ys], "o" + style, label=f"{mode}: E2E {name}")
        for lv in levels:
            assert lv.metrics is not None and lv.metrics.e2el_ms.median is not None
            point = (lv.metrics.output_throughput, lv.metrics.e2el_ms.median / 1000)
            ax.annotate(lv.label, point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("output throughput (tokens/s)")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")


def write_plots(run: Run, out: Path) -> list[Path]:
    """The three PNGs (none when no level completed a request)."""
    modes = _by_mode(run)
    if not modes:
        return []
    title = run.label if run.endpoint.model in run.label else f"{run.label}: {run.endpoint.model}"
    paths = []

    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.5), squeeze=False)
    for ax, (mode, levels) in zip(axes[0], modes.items(), strict=True):
        _throughput(ax, mode, levels)
    fig.suptitle(f"Throughput vs load — {title}")
    paths.append(_save(fig, out / "throughput.png"))

    fig, axes = plt.subplots(2, len(modes), figsize=(7 * len(modes), 8), squeeze=False)
    for column, (mode, levels) in enumerate(modes.items()):
        _percentiles(axes[0][column], mode, levels, "ttft_ms", "Time to first token")
        _percentiles(axes[1][column], mode, levels, "tpot_ms", "Time per output token")
    fig.suptitle(f"Latency percentiles vs load — {title}")
    paths.append(_save(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _curve(ax, modes)
    ax.set_title(f"Latency vs throughput — {title}")
    paths.append(_save(fig, out / "latency_throughput.png"))
    return paths
