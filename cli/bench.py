"""`cellar bench`: measure an OpenAI-compatible endpoint under load, and compare runs.

The measuring lives in benchmarks/suite/; this module turns options into a run, shows progress,
and writes the record, CSV, plots and report.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table as RichTable

from cellar.benchmarks.suite.record import Level, RequestResult, Run
from cellar.cli.common import console, err, fail
from cellar.config_types import parse_duration

if TYPE_CHECKING:
    from cellar.benchmarks.suite.bench import Options

bench_app = typer.Typer(
    help="Benchmark an OpenAI-compatible endpoint (Cellar's or any other); compare runs.",
    invoke_without_command=True,
)

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def _numbers(text: str | None, kind: type[float] | type[int], option: str) -> list[float]:
    if not text:
        return []
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise fail(f"{option} {text!r}: expected numbers separated by commas") from None
    if any(v <= 0 for v in values):
        raise fail(f"{option} {text!r}: every value must be positive")
    return [float(v) for v in values]


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


class _ProgressReporter:
    """A progress bar per load level on stderr, with counts of answers and errors."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[int, TaskID] = {}
        self._started: dict[int, float] = {}
        self._failed: dict[int, int] = {}

    def note(self, text: str) -> None:
        self._progress.console.print(f"[dim]{text}[/]", highlight=False)

    def level_started(self, level: Level) -> None:
        total = level.requests if level.requests is not None else level.duration_s
        self._tasks[id(level)] = self._progress.add_task(level.label, total=total, status="")
        self._started[id(level)] = time.monotonic()
        self._failed[id(level)] = 0

    def result(self, level: Level, result: RequestResult) -> None:
        self._failed[id(level)] += not result.ok
        failed = self._failed[id(level)]
        status = f"{len(level.results) - failed} ok" + (f", {failed} failed" if failed else "")
        done = (
            len(level.results)
            if level.requests is not None
            else time.monotonic() - self._started[id(level)]
        )
        self._progress.update(self._tasks[id(level)], completed=done, status=status)

    def level_finished(self, level: Level) -> None:
        task = self._tasks[id(level)]
        self._progress.update(task, completed=self._progress.tasks[task].total)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"


@contextmanager
def _target(
    base_url: str | None, config: Path | None, out: Path, api_key: str | None
) -> Iterator[tuple[str, str | None]]:
    """(base URL, config started from): a gateway is started for the run when only a config is
    given."""
    if base_url is not None or config is None:
        yield base_url or DEFAULT_URL, None
        return
    from cellar.benchmarks.suite.target import started_gateway

    err.print(f"starting a gateway with {config} (log: {out / 'gateway.log'})", highlight=False)
    try:
        with started_gateway(config, out / "gateway.log", api_key) as url:
            yield url, str(config.resolve())
    except RuntimeError as exc:
        raise fail(str(exc)) from None


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _embedding_table(run: Run) -> RichTable:
    table = RichTable(title=f"{run.label} ({run.workload.inputs_per_request} texts per request)")
    headers = ("level", "ok", "failed", "req/s", "inputs/s", "tokens/s")
    for header in (*headers, "latency p50 ms", "p90 ms", "p99 ms"):
        table.add_column(header, justify="right")
    for level in run.levels:
        m = level.metrics
        if m is None:
            continue
        table.add_row(
            level.label,
            str(m.completed),
            str(m.failed),
            f"{m.request_throughput:.2f}",
            f"{m.input_throughput:,.1f}",
            f"{m.input_token_throughput:,.0f}",
            _number(m.e2el_ms.median),
            _number(m.e2el_ms.p90),
            _number(m.e2el_ms.p99),
        )
    return table


def _summary_table(run: Run) -> RichTable:
    if run.endpoint.api == "embeddings":
        return _embedding_table(run)
    table = RichTable(title=run.label)
    headers = ("level", "ok", "failed", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms")
    for header in (*headers, "TPOT p50 ms", "E2E p50 s", "goodput req/s"):
        table.add_column(header, justify="right")
    for level in run.levels:
        m = level.metrics
        if m is None:
            continue
        table.add_row(
            level.label,
            str(m.completed),
            str(m.failed),
            f"{m.request_throughput:.2f}",
            f"{m.output_throughput:,.1f}",
            _number(m.ttft_ms.median),
            _number(m.ttft_ms.p99),
            _number(m.tpot_ms.median),
            _number(None if m.e2el_ms.median is None else m.e2el_ms.median / 1000, 2),
            _number(m.goodput, 2),
        )
    return table


def _write_outputs(run: Run, out: Path) -> list[Path]:
    from cellar.benchmarks.suite.plots import write_plots
    from cellar.benchmarks.suite.report import write_csv, write_json, write_markdown

    out.mkdir(parents=True, exist_ok=True)
    write_json(run, out / "run.json")
    write_csv(run, out / "levels.csv")
    images = write_plots(run, out)
    write_markdown(run, images, out / "report.md")
    return [out / "run.json", out / "levels.csv", *images, out / "report.md"]


def _self_check_only() -> None:
    from cellar.benchmarks.suite.selfcheck import echo_endpoint, measure

    with (
        err.status("measuring the generator against a local echo endpoint..."),
        echo_endpoint() as url,
        _event_loop_runner() as runner,
    ):
        figures = runner.run(measure(url))
    console.print(
        f"generator self-check: TTFT added at concurrency 1: p50 {figures.ttft_p50_ms:.2f} ms, "
        f"p99 {figures.ttft_p99_ms:.2f} ms; capacity {figures.max_request_rate:,.0f} requests/s "
        f"(at concurrency {figures.concurrency_at_max}); Poisson arrivals at "
        f"{figures.paced_rate or 0:,.0f} requests/s: {figures.rate_accuracy or 0:.1%} of the "
        f"offered rate achieved, TTFT p50 {figures.paced_ttft_p50_ms or 0:.2f} ms, "
        f"p99 {figures.paced_ttft_p99_ms or 0:.2f} ms",
        highlight=False,
    )


@bench_app.callback()
def bench(
    ctx: typer.Context,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", "-u", help=f"Endpoint to measure (default {DEFAULT_URL})"),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name (default: the first listed)")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Start a Cellar gateway with this config for the run"),
    ] = None,
    model_file: Annotated[
        Path | None,
        typer.Option(
            help="The model file the server loaded, to record its sha256 and "
            "quantization (Cellar reports them itself)"
        ),
    ] = None,
    api: Annotated[str, typer.Option(help="completions, chat or embeddings")] = "completions",
    batch: Annotated[
        int, typer.Option(min=1, max=2048, help="Texts per request (--api embeddings)")
    ] = 1,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="CELLAR_API_KEY", help="Bearer token, if the endpoint needs one"),
    ] = None,
    concurrency: Annotated[
        str | None, typer.Option(help="Closed-loop levels, e.g. 1,2,4,8,16 (default 1,2,4,8)")
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            help="Poisson request rates per second, e.g. 0.5,1,2; or `auto`: 25-125% "
            "of the saturation rate"
        ),
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Cap on requests in flight in rate mode")
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            "--requests",
            "-n",
            help="Requests per level (default 4x concurrency, at "
            "least 16; rate mode: about 30 s of arrivals)",
        ),
    ] = None,
    duration: Annotated[str | None, typer.Option(help="Time per level instead, e.g. 60s")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up requests, not counted")] = 2,
    dataset: Annotated[
        str, typer.Option(help="random, prompts (the set shipped with Cellar), or a JSONL path")
    ] = "random",
    input_len: Annotated[int, typer.Option(help="Prompt tokens (random dataset)")] = 128,
    output_len: Annotated[
        int | None, typer.Option(help="Output tokens asked for (random default 128)")
    ] = None,
    range_ratio: Annotated[
        float, typer.Option(help="Vary lengths uniformly by this fraction either way")
    ] = 0.0,
    ignore_eos: Annotated[
        str, typer.Option(help="auto (when the server honours it), on, off")
    ] = "auto",
    temperature: Annotated[float, typer.Option()] = 0.0,
    slo: Annotated[
        str | None, typer.Option(help="Goodput SLOs, e.g. ttft=500ms,tpot=100ms,e2el=10s")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    cold: Annotated[
        bool, typer.Option("--cold", help="Also time the first token with the model unloaded")
    ] = False,
    cold_runs: Annotated[int, typer.Option(help="Cold starts to time with --cold")] = 3,
    self_check: Annotated[
        bool, typer.Option("--self-check", help="Only measure the generator's own cost")
    ] = False,
    generator_check: Annotated[
        bool, typer.Option(help="Measure the generator's capacity before the run")
    ] = True,
    timeout: Annotated[str, typer.Option(help="Per request")] = "600s",
    label: Annotated[str | None, typer.Option(help="Name of the run in reports")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default bench-results/…)")
    ] = None,
) -> None:
    """Measure serving performance: TTFT, TPOT, ITL, latency and throughput at each load level.

    Writes run.json (the full record), levels.csv, throughput/latency PNGs and report.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    if self_check:
        _self_check_only()
        return
    from cellar.benchmarks.suite.bench import Options, new_run
    from cellar.benchmarks.suite.metrics import parse_slo

    if api not in ("completions", "chat", "embeddings"):
        raise fail(f"--api {api!r}: expected completions, chat or embeddings")
    if api == "embeddings" and cold:
        raise fail("--cold times the first token; embeddings have none")
    if ignore_eos not in ("auto", "on", "off"):
        raise fail(f"--ignore-eos {ignore_eos!r}: expected auto, on or off")
    if requests is not None and duration is not None:
        raise fail("give --requests or --duration, not both")
    try:
        slo_ms = parse_slo(slo or "")
        duration_s = parse_duration(duration) if duration else None
        timeout_s = parse_duration(timeout)
    except ValueError as exc:
        raise fail(str(exc)) from None
    auto_rate = rate is not None and rate.strip().lower() == "auto"
    rates = [] if auto_rate else _numbers(rate, float, "--rate")
    levels = [int(c) for c in _numbers(concurrency, int, "--concurrency")]
    if not levels and not rates and not auto_rate:
        levels = [1, 2, 4, 8]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = out or Path("bench-results") / f"{stamp}-{_slug(label or model or 'run')}"
    out_dir.mkdir(parents=True, exist_ok=True)

    with _target(base_url, config, out_dir, api_key) as (url, started_from):
        options = Options(
            base_url=url,
            model=model,
            api=api,  # type: ignore[arg-type]
            api_key=api_key,
            concurrency=levels,
            rates=rates,
            auto_rate=auto_rate,
            max_concurrency=max_concurrency,
            requests=requests,
            duration_s=duration_s,
            warmup=warmup,
            dataset=dataset,
            input_len=input_len,
            output_len=output_len,
            batch=batch,
            range_ratio=range_ratio,
            ignore_eos=ignore_eos,  # type: ignore[arg-type]
            temperature=temperature,
            slo_ms=slo_ms,
            seed=seed,
            cold_runs=cold_runs if cold else 0,
            generator_check=generator_check,
            timeout_s=timeout_s,
            label=label,
            command=sys.argv,
            started_from_config=started_from,
            model_file=model_file,
        )
        run = new_run(options)
        failure = _measure(run, options)
    written = _write_outputs(run, out_dir)
    console.print(_summary_table(run))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    if failure is not None:
        raise fail(failure)
    if run.interrupted:
        raise typer.Exit(130)


def _measure(run: Run, options: Options) -> str | None:
    """Run the benchmark with progress bars; the error that stopped it, if any."""
    from cellar.benchmarks.suite.bench import run_bench
    from cellar.benchmarks.suite.client import ClientError
    from cellar.benchmarks.suite.workload import WorkloadError
    from cellar.errors import StoreError

    columns = (
        TextColumn("{task.description:>14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as progress, _event_loop_runner() as runner:
        try:
            runner.run(run_bench(run, options, _ProgressReporter(progress)))
        except (ClientError, WorkloadError, RuntimeError, OSError, StoreError) as exc:
            return str(exc)
    return None


@bench_app.command("compare")
def compare_runs(
    runs: Annotated[list[Path], typer.Argument(help="run.json files; ratios are to the first")],
    cost_per_hour: Annotated[
        str | None,
        typer.Option(help="Price per hour of each run's machine (one value, or one per run)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write compare.md and compare.png here")
    ] = None,
) -> None:
    """Render runs side by side with ratios (and cost per million output tokens)."""
    from cellar.benchmarks.suite.compare import compare, markdown, parse_costs, write_plot
    from cellar.benchmarks.suite.record import RecordError, load_run

    try:
        loaded = [load_run(path) for path in runs]
        prices = parse_costs(cost_per_hour, len(loaded))
    except (RecordError, ValueError) as exc:
        raise fail(str(exc)) from None
    tables = compare(loaded, prices)
    for table in tables:
        rich = RichTable(title=table.title, title_justify="left")
        for header in table.headers:
            rich.add_column(header)
        for row in table.rows:
            rich.add_row(*row)
        console.print(rich)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(markdown(tables, runs))
        plot = write_plot(loaded, out / "compare.png")
        for path in (out / "compare.md", plot):
            if path is not None:
                console.print(f"wrote {path}", highlight=False)
