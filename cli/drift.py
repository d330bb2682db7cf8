"""`cellar drift MODEL`: a recent window of a model's traffic against a baseline window, per
feature, from the audit log (cellar/drift.py); a Markdown report with plots (driftreport.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cellar.auditlog import default_audit_path, read_lines
from cellar.cli.common import ConfigOpt, console, fail
from cellar.config import beside, config_path, load_config
from cellar.config_types import parse_duration


def _seconds(text: str, option: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise fail(f"{option}: {exc}") from None
    if seconds <= 0:
        raise fail(f"{option}: give a length of time, e.g. 24h or 7d")
    return seconds


def _until(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--until {text!r}: give an ISO time, e.g. 2026-12-01T09:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def drift(
    model: Annotated[str, typer.Argument(help="The served model name (as requests name it)")],
    baseline: Annotated[
        str, typer.Option(help="The baseline: this long, ending where the window starts")
    ] = "7d",
    window: Annotated[
        str, typer.Option(help="The recent window: this long, up to --until")
    ] = "24h",
    until: Annotated[str | None, typer.Option(help="End of the window (default: now)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md and the plots (default: drift-MODEL)")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="Audit log (default: from the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Compare a model's recent requests with a baseline, feature by feature (no text is read:
    the audit log keeps none)."""
    from cellar.drift import Span, compare, split_lines
    from cellar.driftreport import write_report

    end = _until(until)
    split = end - timedelta(seconds=_seconds(window, "--window"))
    start = split - timedelta(seconds=_seconds(baseline, "--baseline"))
    spans = (Span(start, split), Span(split, end))
    if file is None:
        path = config_path(config)
        if config is not None and not path.is_file():
            raise fail(f"{path}: no such config file")
        configured = beside(path, load_config(path).audit.path) if path.is_file() else None
        file = configured or default_audit_path()
    found = split_lines(read_lines(file, spans[0].start), spans, {model})
    if model not in found:
        raise fail(f"{file}: no requests for model {model!r} from {spans[0].start:%Y-%m-%d %H:%M}")
    base, recent = (sample.lines for sample in found[model])
    results = compare(base, recent)
    table = Table(title=f"{model}: window {spans[1]} ({len(recent)} requests) against baseline "
                  f"{spans[0]} ({len(base)})")  # fmt: skip
    for column in ("feature", "PSI", "verdict", "p-value", "baseline", "window"):
        table.add_column(column, justify="right" if column in ("PSI", "p-value") else "left")
    for result in results:
        table.add_row(
            result.feature,
            "-" if result.psi is None else f"{result.psi:.3f}",
            result.verdict,
            "-" if result.p_value is None else f"{result.p_value:.3g}",
            result.summary(result.baseline),
            result.summary(result.window),
        )
    console.print(table)
    report = write_report(results, model, spans, out or Path(f"drift-{model}"))
    console.print(f"report: {report}", highlight=False)
