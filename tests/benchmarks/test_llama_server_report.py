"""The llama-server comparison's report: medians of each figure, and the median of the per-run
ratios (each from two measurements taken seconds apart), not the ratio of the medians."""

from __future__ import annotations

from cellar.benchmarks.llama_server import WORKLOADS, Figures, Run, report


def run(ours: float, theirs: float) -> Run:
    return {
        "cellar": {w: Figures(ours, 1.0, 2.0) for w in WORKLOADS},
        "llama-server": {w: Figures(theirs, 2.0, 8.0) for w in WORKLOADS},
    }


def test_ratios_are_taken_per_run_then_the_median() -> None:
    # The machine drifts: run 2 is slow for both servers. Medians of the figures alone would
    # pair run 2's Cellar with run 3's llama-server.
    text = report([run(100, 100), run(60, 50), run(110, 100)], threads=2)
    row = next(line for line in text.splitlines() if line.startswith("| 4 clients | tok/s"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:] == ["100.00", "100.00", "1.10x", "1.00 1.20 1.10"]
    ttft = next(line for line in text.splitlines() if "TTFT p90" in line)
    assert "0.25x" in ttft
