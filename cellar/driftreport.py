"""The drift report on disk: `report.md` with a verdict per feature, and one PNG per feature
with the two windows' distributions overlaid (each titled, with labelled axes and a legend; the
title and description are also in the PNG's text chunks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellar.drift import FeatureDrift, Span


def _plot(result: FeatureDrift, model: str, spans: tuple[Span, Span], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in a gateway thread
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    try:
        labels = (f"baseline ({len(result.baseline)})", f"window ({len(result.window)})")
        if result.kind == "continuous":
            both = result.baseline + result.window
            edges = [float(x) for x in np.histogram_bin_edges(both, bins=30)] if both else 10
            for data, label in zip((result.baseline, result.window), labels, strict=True):
                axes.hist(data, bins=edges, alpha=0.5, density=True, label=label)
            axes.set_xlabel(result.feature)
            axes.set_ylabel("share of requests (density)")
        else:
            categories = sorted(set(result.baseline) | set(result.window))
            positions = np.arange(len(categories))
            for offset, (data, label) in enumerate(
                zip((result.baseline, result.window), labels, strict=True)
            ):
                shares = [data.count(c) / len(data) if data else 0.0 for c in categories]
                axes.bar(positions + (offset - 0.5) * 0.4, shares, width=0.4, label=label)
            axes.set_xticks(positions, categories, rotation=20)
            axes.set_xlabel(result.feature)
            axes.set_ylabel("share of requests")
        score = "n/a" if result.psi is None else f"{result.psi:.3f}"
        title = f"{model}: {result.feature} (PSI {score}, {result.verdict})"
        axes.set_title(title)
        axes.legend()
        figure.tight_layout()
        description = f"baseline {spans[0]}; window {spans[1]}"
        figure.savefig(out, metadata={"Title": title, "Description": description})
    finally:
        plt.close(figure)


def write_report(
    results: list[FeatureDrift], model: str, spans: tuple[Span, Span], folder: Path
) -> Path:
    """`folder/report.md` and `folder/<feature>.png`; returns the Markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        f"# Drift of {model}",
        "",
        f"- Baseline: {spans[0]}, {len(results[0].baseline)} requests",
        f"- Window: {spans[1]}, {len(results[0].window)} requests",
        "- PSI under 0.1: stable; 0.1-0.25: moderate drift; above 0.25: drift.",
        "",
        "| feature | PSI | verdict | test | p-value | baseline | window |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        score = "-" if result.psi is None else f"{result.psi:.3f}"
        p_value = "-" if result.p_value is None else f"{result.p_value:.3g}"
        rows.append(
            f"| {result.feature} | {score} | {result.verdict} | {result.test} | {p_value} | "
            f"{result.summary(result.baseline)} | {result.summary(result.window)} |"
        )
    rows.append("")
    for result in results:
        _plot(result, model, spans, folder / f"{result.feature}.png")
        rows += [f"![{result.feature}: baseline and window]({result.feature}.png)", ""]
    report = folder / "report.md"
    report.write_text("\n".join(rows), encoding="utf-8")
    return report
