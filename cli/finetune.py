"""`cellar finetune`: a LoRA / QLoRA adapter from a JSONL file, registered in the store with its
lineage. The work lives in finetune/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cellar.chat import load_template_spec
from cellar.cli.common import ConfigOpt, StoreOpt, console, err, fail, open_store
from cellar.config import config_path, load_config
from cellar.errors import StoreError
from cellar.gguf import GGUFError, read_metadata
from cellar.store import STORE_PREFIX, ModelStore

if TYPE_CHECKING:
    from cellar.finetune.train import Hyper

QLORA_CPU_FACTOR = 10
"""QLoRA on a CPU against LoRA, per step (DESIGN.md: about 22 s against 2 s)."""


def _related(store: ModelStore, name: str) -> list[str]:
    """The base and the models it was converted from or to (they share a chat template)."""
    names = [name]
    try:
        manifest = store.get(name)
    except StoreError:
        return names
    if manifest.lineage is not None and manifest.lineage.method == "gguf-to-hf":
        names.append(manifest.lineage.parent)
    names += [c.name for c in store.children(manifest.sha256) if c.format in ("hf", "gguf")]
    return names


def chat_template(
    store: ModelStore, base: str, given: str | None, config: Path | None
) -> str | None:
    """The template the server uses for this model: --chat-template, else the config's
    deployment of the base (or of the GGUF it came from), else the GGUF's own."""
    path = config_path(config)
    if given is not None:
        try:
            return load_template_spec(given, Path.cwd())
        except ValueError as exc:
            raise fail(f"--chat-template: {exc}") from None
    related = _related(store, base)
    if path.is_file():
        loaded = load_config(path)
        for deployment in loaded.models:
            if deployment.source.removeprefix(STORE_PREFIX) in related and deployment.chat_template:
                return load_template_spec(deployment.chat_template, path.parent)
    for name in related:
        manifest = store.get(name)
        if manifest.format == "gguf":
            try:
                found = read_metadata(store.file_of(manifest))[0].get("tokenizer.chat_template")
            except (GGUFError, OSError):
                continue
            if isinstance(found, str):
                return found
    return None


class _Bar:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("training", total=None, loss="-")

    def step(self, done: int, total: int, loss: float | None) -> None:
        shown = f"{loss:.4f}" if loss is not None else "-"
        self._progress.update(self._task, completed=done, total=total, loss=shown)

    def evaluated(self, step: int, eval_loss: float) -> None:
        self._progress.console.print(f"step {step}: eval loss {eval_loss:.4f}", highlight=False)


def finetune(
    base: Annotated[str, typer.Argument(help="Base model in the store (a checkpoint or a GGUF)")],
    data: Annotated[
        Path, typer.Option(help="Training data: JSONL, chat messages or prompt/completion")
    ],
    name: Annotated[
        str, typer.Option(help="Name of the adapter in the store (a new version if it exists)")
    ],
    eval_data: Annotated[
        Path | None, typer.Option("--eval", help="Evaluation data (default: hold out 10%)")
    ] = None,
    method: Annotated[
        str, typer.Option(help="lora, or qlora (an NF4 base; meant for GPUs)")
    ] = "lora",
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha")] = 16,
    dropout: Annotated[float, typer.Option(help="LoRA dropout")] = 0.0,
    target_modules: Annotated[
        str, typer.Option(help="Comma-separated module names, or all-linear")
    ] = "all-linear",
    lr: Annotated[float, typer.Option(help="Learning rate")] = 2e-4,
    epochs: Annotated[float, typer.Option(help="Epochs")] = 3.0,
    steps: Annotated[int, typer.Option(help="Optimizer steps (overrides --epochs)")] = -1,
    batch_size: Annotated[int, typer.Option(help="Examples per step")] = 4,
    max_length: Annotated[int, typer.Option(help="Longest example, in tokens")] = 512,
    seed: Annotated[
        int, typer.Option(help="Seed: the same seed and data give the same adapter")
    ] = 0,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps")] = 10,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps")] = 10,
    chat_template_spec: Annotated[
        str | None,
        typer.Option("--chat-template", help="Template (default: the server's for this model)"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the stopped run of this name")] = False,
    restart: Annotated[bool, typer.Option(help="Discard a stopped run of this name")] = False,
    merge: Annotated[bool, typer.Option(help="Also store a merged checkpoint NAME-merged")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's)")] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="auto, fp32 or bf16: what the passes compute in (auto: bf16 on a GPU that has "
            "it, and for LoRA on a CPU with AVX512-BF16/AMX, under autocast over fp32 weights)"
        ),
    ] = "auto",
    tag: Annotated[
        str | None, typer.Option(help="Tag the new versions, e.g. staging for a rollout")
    ] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Train a LoRA or QLoRA adapter on a stored model; register it for both engines."""
    from cellar.finetune.data import DataError
    from cellar.finetune.pipeline import Request, run
    from cellar.finetune.train import Hyper

    opened = open_store(store, config)
    hyper = Hyper(
        method=method,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=target_modules,
        learning_rate=lr,
        epochs=epochs,
        max_steps=steps,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        eval_every=eval_every,
        save_every=save_every,
        precision=precision,
    )
    for flag, path in (("--data", data), ("--eval", eval_data)):
        if path is not None and not path.is_file():
            raise fail(f"{flag} {path}: no such file")
    template = chat_template(opened, base, chat_template_spec, config)
    request = Request(
        base=base,
        data=data,
        name=name,
        hyper=hyper,
        template=template,
        eval_data=eval_data,
        resume=resume,
        restart=restart,
        merge=merge,
        threads=threads,
        tag=tag,
    )
    _warn_qlora_on_cpu(hyper, data)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            say = lambda text: progress.console.print(f"[dim]{text}[/]", highlight=False)  # noqa: E731
            result = run(opened, request, _Bar(progress), say)
    except DataError as exc:
        raise fail(f"the data cannot be used; nothing was trained or stored:\n{exc}") from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was registered", code=130) from None
    outcome = result.outcome
    if outcome.stopped:
        raise fail(
            f"stopped at step {outcome.steps}; a checkpoint is saved in {result.run_dir}. "
            f"`cellar finetune {base} --data {data} --name {name} --resume` continues it.",
            code=130,
        )
    losses = f"train loss {outcome.train_loss:.4f}" if outcome.train_loss is not None else ""
    if outcome.eval_loss is not None and outcome.first_eval_loss is not None:
        losses += f", eval loss {outcome.first_eval_loss:.4f} -> {outcome.eval_loss:.4f}"
    console.print(
        f"trained {outcome.steps} steps in {result.seconds:.0f} s ({outcome.precision}) on "
        f"{result.base.name}: {losses}",
        highlight=False,
    )
    for manifest in result.registered:
        lineage = manifest.lineage
        follows = f", follows {lineage.previous}" if lineage and lineage.previous else ""
        tagged = f", tagged {tag}" if tag else ""
        console.print(
            f"registered {manifest.label} ({manifest.format}, {manifest.size / 2**20:,.1f} MiB, "
            f"sha256 {manifest.sha256[:12]}{follows}{tagged})",
            highlight=False,
        )


def _warn_qlora_on_cpu(hyper: Hyper, data: Path) -> None:
    import torch

    if hyper.method != "qlora" or torch.cuda.is_available():
        return
    lines = sum(1 for line in data.read_text(encoding="utf-8").splitlines() if line.strip())
    steps = hyper.max_steps
    if steps <= 0:
        steps = math.ceil(lines / max(hyper.batch_size, 1)) * math.ceil(hyper.epochs)
    err.print(
        f"[yellow]warning:[/] QLoRA is meant for GPUs. On this CPU it works but is about "
        f"{QLORA_CPU_FACTOR}x slower than LoRA (about 20 s a step for a 270M model): "
        f"{steps} steps may take {steps * 20 / 60:.0f} min or more.",
        highlight=False,
    )
