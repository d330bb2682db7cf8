"""`cellar quantize`: a quantized copy of a stored model, with its quality and speed report, in
the store only when it passes the gate. The work lives in quantize/."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cellar.cli.common import ConfigOpt, StoreOpt, console, err, fail, open_store
from cellar.config import config_path, load_config
from cellar.versions import parse_ref

_QUANT_SUFFIX = re.compile(r"-(f16|f32|bf16|q\d[\w]*)$", re.IGNORECASE)


def _percent(text: str, option: str = "--max-ppl-increase") -> float:
    value = text.strip().removesuffix("%")
    try:
        number = float(value)
    except ValueError:
        raise fail(f"{option} {text!r}: expected a percentage such as 5%") from None
    if number < 0:
        raise fail(f"{option} cannot be negative")
    return number / 100


def _fraction(value: float | None, option: str) -> float | None:
    if value is not None and not 0 <= value <= 1:
        raise fail(f"{option} {value}: expected a number from 0 to 1")
    return value


def _goldens(model: str, config: Path | None) -> list[dict[str, Any]]:
    """Golden prompts of the config's deployments of `store:MODEL` (completion prompts with a
    regex; chat and JSON-schema ones need the server and are left to `cellar canary`)."""
    path = config_path(config)
    if not path.is_file():
        return []
    loaded = load_config(path)
    found = []
    for deployment in loaded.models:
        if deployment.source != f"store:{model}":
            continue
        for index, golden in enumerate(deployment.canary):
            if golden.prompt is not None and golden.expect_regex is not None:
                found.append(
                    {
                        "name": golden.name or f"{deployment.name}#{index}",
                        "prompt": golden.prompt,
                        "max_tokens": golden.max_tokens,
                        "regex": golden.expect_regex,
                    }
                )
    return found


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Bar:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("tensors", total=None)

    def stage(self, text: str) -> None:
        self._progress.console.print(f"[dim]{text}[/]", highlight=False)

    def tensors(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)


def quantize(
    model: Annotated[
        str, typer.Argument(help="A model in the store: a GGUF, or a checkpoint (converted first)")
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="GGUF: f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0; checkpoint: bnb-int8, bnb-nf4",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            help="Name of the result (default: MODEL with the new type); a new version if it exists"
        ),
    ] = None,
    eval_file: Annotated[
        Path | None,
        typer.Option(
            help="Text for perplexity and KL, or for an embedding model the sentences compared "
            "(default: the shipped one)"
        ),
    ] = None,
    max_ppl_increase: Annotated[
        str | None,
        typer.Option(help="Largest perplexity rise allowed, e.g. 5% (default: per target)"),
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(
            help="Embedding models: lowest mean cosine to the source's vectors (default: per "
            "target)"
        ),
    ] = None,
    min_top5_agreement: Annotated[
        str | None,
        typer.Option(
            help="Embedding models: lowest share of top-5 neighbours kept, e.g. 90% (default: "
            "per target)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Register even when the gate fails")] = False,
    allow_requantize: Annotated[
        bool, typer.Option(help="Quantize an already-quantized model (marked lossy)")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="Threads (default: every core)")] = None,
    tag: Annotated[
        str | None, typer.Option(help="Tag the new version, e.g. staging for a rollout")
    ] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Quantize a stored model, measure what it cost, and register it if the gate passes."""
    from cellar.quantize.pipeline import Request, default_eval_file, quantize_model
    from cellar.quantize.report import rows
    from cellar.quantize.targets import target

    chosen = target(to)
    text = eval_file or default_eval_file()
    if not text.is_file():
        raise fail(f"--eval-file {text}: no such file")
    base = parse_ref(model).name  # NAME@prod -> NAME
    new_name = name or f"{_QUANT_SUFFIX.sub('', base)}-{chosen.name}"
    request = Request(
        model=model,
        target=chosen,
        name=new_name,
        eval_file=text,
        max_ppl_increase=_percent(max_ppl_increase) if max_ppl_increase else None,
        min_cosine=_fraction(min_cosine, "--min-cosine"),
        min_top5_agreement=_fraction(
            _percent(min_top5_agreement, "--min-top5-agreement") if min_top5_agreement else None,
            "--min-top5-agreement",
        ),
        force=force,
        allow_requantize=allow_requantize,
        threads=threads or _cores(),
        goldens=_goldens(model, config),
        tag=tag,
    )
    opened = open_store(store, config)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            manifest, report = quantize_model(opened, request, _Bar(progress))
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was registered", code=130) from None
    table = Table(title=f"{model} -> {manifest.name}")
    for column in ("figure", "source", "result", "change"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows(report):
        table.add_row(*row)
    console.print(table)
    folder = opened.dir_of(manifest)
    forced = " (gate failed; registered because of --force)" if not report["gate"]["passed"] else ""
    lineage = manifest.lineage
    follows = f", follows {lineage.previous}" if lineage and lineage.previous else ""
    tagged = f", tagged {tag}" if tag else ""
    console.print(
        f"registered {manifest.label} ({manifest.size / 2**20:,.1f} MiB, sha256 "
        f"{manifest.sha256[:12]}{follows}{tagged}){forced}; report: {folder / 'report.md'}",
        highlight=False,
    )
