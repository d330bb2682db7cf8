"""The embeddings benchmark's table: medians of each figure, ratios taken per run."""

from __future__ import annotations

from cellar.benchmarks.embeddings import table


def test_ratios_are_taken_per_run_then_the_median() -> None:
    figures = {
        "st": [60.0, 50.0, 58.0],
        "cellar-1": [66.0, 40.0, 70.0],
        "cellar-8": [72.0, 60.0, 58.0],
        "query": [5.0, 9.0, 6.0],
    }
    lines = table(figures, 32)
    one = next(line for line in lines if "1 client," in line)
    assert "| 66.0 | 58.0 | 1.10x | 1.10 0.80 1.21 |" in one
    eight = next(line for line in lines if "8 clients" in line)
    assert "| 60.0 | 58.0 | 1.20x | 1.20 1.20 1.00 |" in eight
    assert "| 6.0 | - | target <= 15 | 5.0 9.0 6.0 |" in lines[-1]
