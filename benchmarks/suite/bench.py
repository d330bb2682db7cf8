"""One `cellar bench` run from start to end: describe the target, calibrate the workload, measure
the generator, the cold start, warm up, then every load level.

Everything lands in the `Run` record as it is measured; when the run is cancelled (Ctrl-C) the
record keeps what was measured so far and is marked interrupted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from cellar.benchmarks.suite import selfcheck
from cellar.benchmarks.suite.client import Client, ClientError
from cellar.benchmarks.suite.record import Api, Level, RequestResult, Run, WorkloadSpec
from cellar.benchmarks.suite.runner import LevelPlan, default_requests, run_level
from cellar.benchmarks.suite.target import describe, describe_model_file, first_model, measure_cold
from cellar.benchmarks.suite.workload import (
    RANDOM,
    SHIPPED,
    Calibration,
    Prompt,
    random_text,
    read_prompts,
    shipped_prompts_path,
)
from cellar.benchmarks.suite.workload import Workload as Prompts

AUTO_RATE_FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.25)
"""`--rate auto`: these fractions of the saturation request rate (the best closed-loop one)."""
SATURATION_CONCURRENCY = 16
_CALIBRATION_WORDS = (64, 192)


@dataclass
class Options:
    base_url: str
    model: str | None
    api: Api = "completions"
    api_key: str | None = None
    concurrency: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    auto_rate: bool = False
    max_concurrency: int | None = None
    requests: int | None = None
    duration_s: float | None = None
    warmup: int = 2
    dataset: str = RANDOM
    input_len: int = 128
    output_len: int | None = None
    batch: int = 1
    """Texts per embeddings request."""
    range_ratio: float = 0.0
    ignore_eos: Literal["auto", "on", "off"] = "auto"
    temperature: float = 0.0
    slo_ms: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    cold_runs: int = 0
    generator_check: bool = True
    timeout_s: float = 600.0
    label: str | None = None
    command: list[str] = field(default_factory=list)
    started_from_config: str | None = None
    model_file: Path | None = None


class Reporter(Protocol):
    def note(self, text: str) -> None: ...

    def level_started(self, level: Level) -> None: ...

    def result(self, level: Level, result: RequestResult) -> None: ...

    def level_finished(self, level: Level) -> None: ...


def new_run(options: Options) -> Run:
    """An empty record; `run_bench` fills it in."""
    from cellar.benchmarks.suite.record import Endpoint, Hardware

    return Run(
        label=options.label or "",
        started_at=datetime.now(UTC),
        command=options.command,
        endpoint=Endpoint(base_url=options.base_url, model=options.model or "", api=options.api),
        hardware=Hardware(server_source="unknown", client={}),
        workload=WorkloadSpec(
            dataset=options.dataset, seed=options.seed, ignore_eos=False, warmup_requests=0
        ),
        slo_ms=options.slo_ms,
    )


async def _calibrate(client: Client) -> Calibration | None:
    counts = []
    for words in _CALIBRATION_WORDS:
        usage = await client.probe(Prompt(random_text(words, seed=words), None, 1))
        if not isinstance(usage.get("prompt_tokens"), int):
            return None
        counts.append(usage["prompt_tokens"])
    low, high = _CALIBRATION_WORDS
    per_word = (counts[1] - counts[0]) / (high - low)
    if per_word <= 0:
        return None
    return Calibration(per_word, counts[0] - per_word * low)


async def _ignore_eos(client: Client, mode: str) -> tuple[bool, bool | None]:
    """(send ignore_eos, did the server honour it)."""
    if mode == "off":
        return False, None
    asked = 24
    try:
        usage = await client.probe(Prompt(random_text(4, seed=1), None, asked), ignore_eos=True)
    except ClientError:
        if mode == "on":
            raise
        return False, False  # the server refuses the parameter
    honoured = usage.get("completion_tokens") == asked
    return True, honoured


def _workload(options: Options, calibration: Calibration | None) -> Prompts:
    batch = options.batch if options.api == "embeddings" else 0
    if options.dataset == RANDOM:
        return Prompts(
            None,
            seed=options.seed,
            input_len=options.input_len,
            output_len=options.output_len or 128,
            range_ratio=options.range_ratio,
            calibration=calibration or Calibration(1.3, 1.0),
            batch=batch,
        )
    path = shipped_prompts_path() if options.dataset == SHIPPED else Path(options.dataset)
    api = "chat" if options.api == "embeddings" else options.api  # any line gives a text
    fixed = read_prompts(path, api, options.output_len)
    return Prompts(fixed, seed=options.seed, batch=batch)


def _plans(options: Options) -> list[LevelPlan]:
    plans = []
    for value in options.concurrency:
        count = options.requests or (
            None if options.duration_s else default_requests("concurrency", value)
        )
        plans.append(LevelPlan("concurrency", value, count, options.duration_s))
    for rate in options.rates:
        count = options.requests or (None if options.duration_s else default_requests("rate", rate))
        plans.append(LevelPlan("rate", rate, count, options.duration_s))
    return plans


async def _level(
    run: Run, client: Client, prompts: Prompts, plan: LevelPlan, opts: Options, rep: Reporter
) -> Level:
    level = plan.level()
    run.levels.append(level)
    rep.level_started(level)
    await run_level(
        client,
        prompts,
        plan,
        level,
        on_result=rep.result,
        slo_ms=opts.slo_ms,
        max_concurrency=opts.max_concurrency,
        seed=opts.seed + len(run.levels),
    )
    rep.level_finished(level)
    return level


async def _warm_up(client: Client, prompts: Prompts, options: Options) -> None:
    if options.warmup <= 0:
        return
    width = min(options.warmup, max(options.concurrency, default=1))
    plan = LevelPlan("concurrency", width, options.warmup, None)
    level = plan.level()
    await run_level(client, prompts, plan, level)
    failures = [r for r in level.results if not r.ok]
    if len(failures) == len(level.results):
        first = failures[0]
        raise ClientError(f"every warm-up request failed: {first.error} {first.error_detail or ''}")


async def _measure(run: Run, options: Options, reporter: Reporter) -> None:
    async with Client(
        options.base_url,
        options.model or "",
        options.api,
        api_key=options.api_key,
        timeout_s=options.timeout_s,
        temperature=options.temperature,
    ) as client:
        if not options.model:
            client.model = await first_model(client)
        reporter.note(f"describing {client.root} ({client.model})")
        calibration = await _calibrate(client) if options.dataset == RANDOM else None
        embeds = options.api == "embeddings"
        client.ignore_eos, honoured = await _ignore_eos(
            client, "off" if embeds else options.ignore_eos
        )
        run.endpoint, run.hardware = await describe(client)
        run.endpoint.started_from_config = options.started_from_config
        if options.model_file is not None and not run.endpoint.model_sha256:
            reporter.note(f"hashing {options.model_file}")
            await asyncio.to_thread(describe_model_file, run.endpoint, options.model_file)
        run.label = options.label or f"{client.model} on {_host(run)}"
        run.workload = WorkloadSpec(
            dataset=options.dataset,
            input_len=options.input_len if options.dataset == RANDOM else None,
            output_len=None
            if embeds
            else options.output_len or (128 if options.dataset == RANDOM else None),
            range_ratio=options.range_ratio,
            seed=options.seed,
            ignore_eos=client.ignore_eos,
            ignore_eos_honoured=honoured,
            warmup_requests=options.warmup,
            tokens_per_word=calibration.per_word if calibration else None,
            inputs_per_request=options.batch if embeds else 1,
        )
        if options.generator_check:
            reporter.note("measuring the generator against a local echo endpoint")
            with selfcheck.echo_endpoint() as echo_url:
                run.generator = await selfcheck.measure(echo_url, quick=True)
        if options.cold_runs:
            reporter.note(f"cold start: unloading {client.model} and timing the first token")
            run.cold = await measure_cold(client, options.cold_runs)
        prompts = _workload(options, calibration)
        reporter.note(f"warm-up: {options.warmup} request(s), not counted")
        await _warm_up(client, prompts, options)
        for plan in _plans(options):
            await _level(run, client, prompts, plan, options, reporter)
        if options.auto_rate:
            await _auto_rates(run, client, prompts, options, reporter)


async def _auto_rates(
    run: Run, client: Client, prompts: Prompts, options: Options, reporter: Reporter
) -> None:
    closed = [lv for lv in run.levels if lv.mode == "concurrency" and lv.metrics is not None]
    if not closed:
        plan = LevelPlan(
            "concurrency",
            options.max_concurrency or SATURATION_CONCURRENCY,
            options.requests or default_requests("concurrency", SATURATION_CONCURRENCY),
            options.duration_s,
        )
        closed = [await _level(run, client, prompts, plan, options, reporter)]
    saturation = max(lv.metrics.request_throughput for lv in closed if lv.metrics is not None)
    if saturation <= 0:
        reporter.note("no request completed in closed loop: skipping the rate sweep")
        return
    for fraction in AUTO_RATE_FRACTIONS:
        rate = round(saturation * fraction, 4)
        count = options.requests or (None if options.duration_s else default_requests("rate", rate))
        plan = LevelPlan("rate", rate, count, options.duration_s)
        await _level(run, client, prompts, plan, options, reporter)


def _host(run: Run) -> str:
    server = run.hardware.server or {}
    return str(server.get("hostname") or run.endpoint.base_url.split("://")[-1].split("/")[0])


async def run_bench(run: Run, options: Options, reporter: Reporter) -> None:
    """Fill `run`; on cancellation keep what was measured and mark it interrupted."""
    started = time.perf_counter()
    try:
        await _measure(run, options, reporter)
    except asyncio.CancelledError:
        run.interrupted = True
        reporter.note(f"interrupted after {time.perf_counter() - started:.0f} s")
    finally:
        run.finished_at = datetime.now(UTC)
