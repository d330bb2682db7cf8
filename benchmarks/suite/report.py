"""Writing a run: the JSON record, a CSV row per level, and a Markdown report beside the plots."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any

from cellar.benchmarks.suite.record import Level, Run, Stat

STATS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
PERCENTILES = ("mean", "median", "p90", "p99")
GENERATOR_HEADROOM = 10.0
"""The generator should drive at least this many times the server's request rate."""


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(run: Run, path: Path) -> None:
    _atomic_write(path, run.model_dump_json(indent=1))


def level_row(run: Run, level: Level) -> dict[str, Any]:
    m = level.metrics
    row: dict[str, Any] = {"label": run.label, "mode": level.mode, "value": level.value}
    if m is None:
        return row
    row.update(
        completed=m.completed,
        failed=m.failed,
        cancelled=level.cancelled,
        duration_s=round(m.duration_s, 3),
        request_throughput=round(m.request_throughput, 4),
        output_throughput=round(m.output_throughput, 2),
        total_token_throughput=round(m.total_token_throughput, 2),
        mean_in_flight=round(m.mean_in_flight, 2),
    )
    for name in STATS:
        stat: Stat = getattr(m, name)
        for key in PERCENTILES:
            value = getattr(stat, key)
            row[f"{name.removesuffix('_ms')}_{key}_ms"] = None if value is None else round(value, 2)
    row.update(
        goodput=None if m.goodput is None else round(m.goodput, 4),
        slo_met=m.slo_met,
        output_tokens_source=m.output_tokens_source,
        requested_output_tokens_mean=m.requested_output_tokens_mean,
        output_tokens_mean=m.output_tokens_mean,
        short_outputs=m.short_outputs,
        errors=";".join(f"{kind}={count}" for kind, count in m.errors.items()),
        interrupted=level.interrupted,
    )
    return row


def write_csv(run: Run, path: Path) -> None:
    rows = [level_row(run, level) for level in run.levels]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def peak_request_rate(run: Run) -> float:
    rates = [lv.metrics.request_throughput for lv in run.levels if lv.metrics is not None]
    return max(rates, default=0.0)


def headroom(run: Run) -> float | None:
    """How many times the server's best request rate the generator can drive."""
    peak = peak_request_rate(run)
    if run.generator is None or peak <= 0:
        return None
    return run.generator.max_request_rate / peak


def describe_machine(facts: dict[str, Any] | None) -> str:
    if not facts:
        return "unknown"
    gib = facts.get("ram_bytes", 0) / 2**30
    cores = f"{facts.get('cpu_cores_physical')} cores / {facts.get('cpu_cores_logical')} threads"
    gpus = facts.get("gpus") or []
    gpu = ", ".join(f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB)" for g in gpus) or "no GPU"
    return f"{facts.get('cpu_model')}, {cores}, {gib:.0f} GiB RAM, {gpu}; {facts.get('os')}"


def _embedding_levels(run: Run) -> list[str]:
    lines = [
        f"Each request embeds {run.workload.inputs_per_request} text(s).",
        "",
        "| level | ok | failed | req/s | inputs/s | tokens/s | latency p50 / p90 / p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for level in run.levels:
        m = level.metrics
        if m is None:
            continue
        e2e = m.e2el_ms
        lines.append(
            f"| {level.label}{' (interrupted)' if level.interrupted else ''} | {m.completed} "
            f"| {m.failed} | {_fmt(m.request_throughput, 2)} | {_fmt(m.input_throughput)} "
            f"| {_fmt(m.input_token_throughput)} "
            f"| {_fmt(e2e.median)} / {_fmt(e2e.p90)} / {_fmt(e2e.p99)} |"
        )
    return lines


def _level_table(run: Run) -> list[str]:
    if run.endpoint.api == "embeddings":
        return _embedding_levels(run)
    lines = [
        "| level | ok | failed | req/s | output tok/s | total tok/s | TTFT p50 / p90 / p99 (ms) "
        "| TPOT p50 / p90 / p99 (ms) | ITL p50 / p99 (ms) | E2E p50 / p99 (s) | goodput (req/s) |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|---:|",
    ]
    for level in run.levels:
        m = level.metrics
        if m is None:
            continue
        e2e = m.e2el_ms
        lines.append(
            f"| {level.label}{' (interrupted)' if level.interrupted else ''} | {m.completed} "
            f"| {m.failed} | {_fmt(m.request_throughput, 2)} | {_fmt(m.output_throughput)} "
            f"| {_fmt(m.total_token_throughput)} "
            f"| {_fmt(m.ttft_ms.median)} / {_fmt(m.ttft_ms.p90)} / {_fmt(m.ttft_ms.p99)} "
            f"| {_fmt(m.tpot_ms.median)} / {_fmt(m.tpot_ms.p90)} / {_fmt(m.tpot_ms.p99)} "
            f"| {_fmt(m.itl_ms.median)} / {_fmt(m.itl_ms.p99)} "
            f"| {_fmt(_seconds(e2e.median), 2)} / {_fmt(_seconds(e2e.p99), 2)} "
            f"| {_fmt(m.goodput, 2)} |"
        )
    return lines


def _errors(run: Run) -> list[str]:
    lines = []
    for level in run.levels:
        if level.metrics is not None and level.metrics.errors:
            kinds = ", ".join(f"`{k}` x {n}" for k, n in level.metrics.errors.items())
            lines.append(f"- {level.label}: {kinds}")
        if level.cancelled:
            lines.append(f"- {level.label}: {level.cancelled} in flight when interrupted")
    return lines or ["None."]


def _output_accounting(run: Run) -> list[str]:
    w = run.workload
    if w.ignore_eos and w.ignore_eos_honoured:
        how = "`ignore_eos` was sent and the server honoured it: outputs have fixed lengths."
    elif w.ignore_eos:
        how = "`ignore_eos` was sent but the server did not honour it."
    else:
        how = "`ignore_eos` was not sent: answers may end early at end-of-text."
    lines = [how, ""]
    for level in run.levels:
        m = level.metrics
        if m is None or m.output_tokens_mean is None:
            continue
        lines.append(
            f"- {level.label}: {m.output_tokens_mean:.1f} output tokens on average for "
            f"{m.requested_output_tokens_mean:.1f} asked; {m.short_outputs} of {m.completed} "
            f"ended early; counts from {m.output_tokens_source}."
        )
    return lines


def markdown(run: Run, images: list[Path]) -> str:
    e, h, w = run.endpoint, run.hardware, run.workload
    lines = [
        f"# cellar bench: {run.label}",
        "",
        f"{run.started_at:%Y-%m-%d %H:%M:%S %Z}"
        + (" — **interrupted**: partial results" if run.interrupted else ""),
        "",
        "## What was measured",
        "",
        f"- Endpoint: `{e.base_url}`, model `{e.model}`, API `{e.api}`"
        + (f", server `{e.server_header}`" if e.server_header else ""),
        f"- Engine: {e.engine or 'unknown'} {e.engine_version or ''}".rstrip(),
        f"- Model sha256: `{e.model_sha256 or 'unknown'}`, quantization: {e.quantization or '?'}",
        f"- Server machine ({h.server_source}): {describe_machine(h.server)}",
        f"- Client machine: {describe_machine(h.client)}",
        f"- Workload: {w.dataset}"
        + (f", input {w.input_len} tokens" if w.input_len else "")
        + (f", output {w.output_len} tokens" if w.output_len else "")
        + (f" (±{w.range_ratio:.0%})" if w.range_ratio else "")
        + f", seed {w.seed}, {w.warmup_requests} warm-up request(s) not counted",
    ]
    if run.slo_ms:
        slo = ", ".join(f"{k} ≤ {v:g} ms" for k, v in run.slo_ms.items())
        lines.append(f"- SLOs for goodput: {slo}")
    lines += ["", "## Results", "", *_level_table(run), ""]
    if run.cold is not None and run.cold.cold_ttft_ms:
        cold = sorted(run.cold.cold_ttft_ms)[len(run.cold.cold_ttft_ms) // 2]
        warm = sorted(run.cold.warm_ttft_ms)[len(run.cold.warm_ttft_ms) // 2]
        lines += [
            "## Cold start",
            "",
            f"Time to first token with the model unloaded (load + warm-up + first token), median "
            f"of {len(run.cold.cold_ttft_ms)}: **{cold:,.0f} ms**; warm: {warm:,.1f} ms "
            f"({cold / warm:,.0f}x).",
            "",
        ]
    lines += ["## Errors", "", *_errors(run), "", "## Output lengths", "", *_output_accounting(run)]
    if run.generator is not None:
        g = run.generator
        room = headroom(run)
        verdict = ""
        if room is not None:
            verdict = f" = {room:,.0f}x the best rate measured here" + (
                "" if room >= GENERATOR_HEADROOM else " (**under 10x: the generator may limit**)"
            )
        lines += [
            "",
            "## The generator's own cost",
            "",
            f"Against a local endpoint that answers at once: TTFT p50 {g.ttft_p50_ms:.2f} ms, "
            f"p99 {g.ttft_p99_ms:.2f} ms (an upper bound on what it adds); it drives "
            f"{g.max_request_rate:,.0f} requests/s{verdict}."
            + (
                f" With Poisson arrivals at {g.paced_rate:,.0f} requests/s its TTFT is p50 "
                f"{g.paced_ttft_p50_ms:.2f} ms, p99 {g.paced_ttft_p99_ms:.2f} ms."
                if g.paced_rate and g.paced_ttft_p50_ms and g.paced_ttft_p99_ms
                else ""
            ),
        ]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def write_markdown(run: Run, images: list[Path], path: Path) -> None:
    _atomic_write(path, markdown(run, images))
