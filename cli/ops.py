"""`cellar audit summary` (who used which model), `cellar canary` (run the golden prompts on
the running gateway now) and `cellar tools` (llama.cpp's converters)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cellar.auditlog import default_audit_path, read_lines, summarize
from cellar.cli.common import ConfigOpt, console, fail
from cellar.cli.gateway import ApiKeyOpt, BaseUrlOpt, admin_call, gateway_url
from cellar.config import CellarConfig, beside, config_path, load_config
from cellar.config_types import parse_duration

audit_app = typer.Typer(help="The audit log of requests.", no_args_is_help=True)


def _config(config: Path | None) -> tuple[Path, CellarConfig | None]:
    path = config_path(config)
    if not path.is_file():
        if config is not None:
            raise fail(f"{path}: no such config file")
        return path, None
    return path, load_config(path)


@audit_app.command("summary")
def summary(
    since: Annotated[str, typer.Option(help="How far back, e.g. 24h, 7d, 30m")] = "24h",
    file: Annotated[Path | None, typer.Option(help="Audit log (default: from the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Requests, errors, refusals, tokens and latency per key and model."""
    path, loaded = _config(config)
    if file is None:
        configured = beside(path, loaded.audit.path) if loaded else None
        file = configured or default_audit_path()
    try:
        start = datetime.now(UTC) - timedelta(seconds=parse_duration(since))
    except ValueError as exc:
        raise fail(str(exc)) from None
    table_data = summarize(read_lines(file, start))
    if not table_data:
        console.print(f"no requests in {file} since {start:%Y-%m-%d %H:%M} UTC", highlight=False)
        return
    table = Table(title=f"{file} since {start:%Y-%m-%d %H:%M} UTC")
    first = next(iter(table_data.values())).row()
    for column in ("key", "model", *first):
        table.add_column(column, justify="left" if column in ("key", "model") else "right")
    for (key, model), usage in table_data.items():
        table.add_row(key, model, *usage.row().values())
    console.print(table)


def canary(
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the golden prompts on the running gateway now; exit code 1 when one fails."""
    url = gateway_url(config, base_url)
    params = {"model": model} if model else {}
    answer = admin_call("POST", url, "/admin/canary", api_key, params=params)
    if not answer["results"]:
        console.print("no model has golden prompts (`canary:` in its config)")
        return
    table = Table(title="canary")
    for column in ("model", "prompt", "result", "latency ms", "detail"):
        table.add_column(column)
    for r in answer["results"]:
        verdict = "[green]pass[/]" if r["passed"] else "[red]FAIL[/]"
        table.add_row(r["model"], r["prompt"], verdict, f"{r['latency_ms']:.0f}", r["detail"])
    console.print(table)
    if not answer["passed"]:
        raise typer.Exit(1)


tools_app = typer.Typer(
    help="llama.cpp's converters (HF -> GGUF, LoRA -> GGUF), installed for offline use.",
    no_args_is_help=True,
)


@tools_app.command("install")
def install_tools(
    sdist: Annotated[Path, typer.Argument(help="The llama-cpp-python source package (.tar.gz)")],
) -> None:
    """Unpack llama.cpp's converters from the llama-cpp-python source package (`make setup`
    does this); the same package again is a no-op."""
    from cellar.convert.llamacpp_tools import install

    where, written = install(sdist)
    verb = "installed" if written else "already installed"
    console.print(f"llama.cpp converters {verb} in {where}", highlight=False, soft_wrap=True)


@tools_app.command("show")
def show_tools() -> None:
    """Where the converters are, and whether they are installed."""
    from cellar.convert.llamacpp_tools import ToolsMissing, llama_cpp_version, script, tools_dir

    console.print(f"{tools_dir()} (llama-cpp-python {llama_cpp_version()})", highlight=False)
    try:
        for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
            console.print(f"  {script(name)}", highlight=False)
    except ToolsMissing as exc:
        raise fail(exc.message, code=1) from None  # a check that found them missing
