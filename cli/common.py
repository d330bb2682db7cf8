"""What the `cellar` subcommands share: consoles, common options, errors, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from typer.core import TyperGroup

from cellar.config import DEFAULT_CONFIG, config_path, load_config
from cellar.errors import ToolError
from cellar.hashing import Progress as ProgressCallback
from cellar.store import ModelStore, default_store_root, store_for

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help=f"Config file (default: $CELLAR_CONFIG or {DEFAULT_CONFIG})"
    ),
]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Store directory (default: from the config)")
]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table")]


def print_table(table: Table) -> None:
    """A table on a terminal is fitted to its width; piped or redirected, every cell is printed
    whole (no ellipsis, no wrapping), however wide that makes the lines."""
    if console.is_terminal:
        console.print(table)
        return
    width = Measurement.get(console, console.options.update_width(100_000), table).maximum
    Console(width=max(width, console.width), no_color=True, highlight=False).print(table)


def print_json(data: Any) -> None:
    """JSON on stdout, exactly as `json.dumps` writes it (no markup, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def digest(sha256: str, keep: int = 16) -> str:
    """A sha256 cut short for a person at a terminal; whole for a pipe or a file."""
    return sha256[:keep] + "…" if console.is_terminal and len(sha256) > keep else sha256


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


class Commands(TyperGroup):
    """The root command group: its `invoke` is the CLI's one error handler. A ToolError from any
    command is printed as `error: <message>` and ends the command with its `exit_code`."""

    def invoke(self, ctx: Any) -> Any:  # typer.Context; typer types it with its own click
        try:
            return super().invoke(ctx)
        except ToolError as exc:
            raise fail(exc.message, exc.exit_code) from None


def open_store(store: Path | None, config: Path | None) -> ModelStore:
    if store is not None:
        return ModelStore(store)
    path = config_path(config)
    if config is None and not path.is_file():
        return ModelStore(default_store_root())
    return store_for(load_config(path))


@contextmanager
def progress_bar(label: str) -> Iterator[ProgressCallback]:
    """A byte progress bar on stderr, driven by the store's (done, total) callback."""
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)
