"""The `cellar` command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from cellar.config import DEFAULT_CONFIG, config_json_schema, config_path, load_config
from cellar.errors import ConfigError, StoreError
from cellar.store import ModelStore, default_store_root, store_for
from cellar.store import Progress as ProgressCallback

app = typer.Typer(
    help="Cellar: a private, on-premise, OpenAI-compatible LLM server.", no_args_is_help=True
)
models_app = typer.Typer(help="The local model store.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

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


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _store(store: Path | None, config: Path | None) -> ModelStore:
    if store is not None:
        return ModelStore(store)
    path = config_path(config)
    if config is None and not path.is_file():
        return ModelStore(default_store_root())
    try:
        return store_for(load_config(path))
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@contextmanager
def _progress(label: str) -> Iterator[ProgressCallback]:
    """A byte progress bar on stderr, driven by the store's (done, total) callback."""
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Start the gateway (host and port from the config, or $CELLAR_HOST / $CELLAR_PORT)."""
    from server.main import serve as run_gateway  # the CLI is the one place that starts it

    try:
        run_gateway(config_path(config))
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@models_app.command("import")
def import_model(
    path: Annotated[Path, typer.Argument(help="A .gguf file")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name in the store")],
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Copy a model file into the store, recording its size and sha256."""
    target = _store(store, config)
    try:
        with _progress(f"importing {name}") as progress:
            result = target.import_file(path, name, progress)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    verb = "imported" if result.created else "already in the store:"
    sha = result.manifest.sha256
    console.print(f"{verb} [bold]{name}[/] sha256 {sha}", highlight=False, soft_wrap=True)


@models_app.command("list")
def list_models(store: StoreOpt = None, config: ConfigOpt = None) -> None:
    """List the models in the store."""
    target = _store(store, config)
    table = Table("name", "format", "size", "sha256", "created", title=f"store: {target.root}")
    for manifest in target.list():
        table.add_row(
            manifest.name,
            manifest.format,
            f"{manifest.size / 1e6:.1f} MB",
            manifest.sha256[:16] + "…",
            manifest.created.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@models_app.command("show")
def show_model(name: str, store: StoreOpt = None, config: ConfigOpt = None) -> None:
    """Print a model's manifest as JSON."""
    try:
        manifest = _store(store, config).get(name)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    console.print_json(manifest.model_dump_json())


@models_app.command("verify")
def verify_models(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to check (default: all)")
    ] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Re-hash stored models and compare with their manifests; exit 1 if any changed."""
    target = _store(store, config)
    try:
        todo = names or [m.name for m in target.list()]
    except StoreError as exc:
        raise _fail(str(exc)) from None
    bad = 0
    for name in todo:
        try:
            with _progress(f"verifying {name}") as progress:
                target.verify(name, progress)
            console.print(f"[green]ok[/]   {name}", highlight=False)
        except StoreError as exc:
            bad += 1
            console.print(f"[red]FAIL[/] {exc}", highlight=False)
    if bad:
        raise typer.Exit(1)


@models_app.command("ps")
def models_ps(config: ConfigOpt = None) -> None:
    """What the running gateway has loaded: state, pid, memory, uptime, load, errors."""
    import httpx

    path = config_path(config)
    try:
        server = load_config(path).server
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    url = f"http://{server.host}:{server.port}/admin/models"
    try:
        view = httpx.get(url, timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise _fail(f"no gateway answers at {url}: {exc}") from None
    budget = view.get("memory_budget_bytes", 0) / 2**30
    table = Table(title=f"{url} (memory budget {budget:.2f} GiB)")
    table.add_column("model", no_wrap=True)
    for header in ("state", "pid", "GiB", "up", "run", "wait", "restarts"):
        table.add_column(header, no_wrap=True)
    table.add_column("error")
    for m in view["models"]:
        uptime = "" if m["uptime_s"] is None else f"{m['uptime_s']:.0f}s"
        table.add_row(
            m["name"],
            m["state"],
            str(m["pid"] or ""),
            f"{m['memory_estimate_bytes'] / 2**30:.2f}",
            uptime,
            str(m["running"]),
            str(m["waiting"]),
            str(m["restarts"]),
            m["error"] or "",
        )
    console.print(table)


@app.command()
def warmup(
    model: Annotated[str, typer.Argument(help="A model name from the config")],
    config: ConfigOpt = None,
) -> None:
    """Start the model's worker, then print time to first token cold (first request) and warm."""
    import asyncio

    from cellar.deployments import resolve_deployments
    from engines.launch import ProcessLauncher
    from engines.warmup import cold_and_warm

    path = config_path(config)
    try:
        loaded = load_config(path)
        deployments = {d.spec.name: d for d in resolve_deployments(loaded, store_for(loaded), path)}
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if model not in deployments:
        raise _fail(f"no model {model!r} in {path} (models: {', '.join(deployments)})")
    deployment = deployments[model]
    prompts = deployment.spec.warmup.prompts or ["Hello"]

    async def measure() -> tuple[float, float]:
        engine = ProcessLauncher(loaded.server.log_level)(deployment)
        await engine.start()
        try:
            await engine.wait_ready(deployment.spec.startup_timeout_s)
            return await cold_and_warm(
                engine.base_url, model, prompts, deployment.spec.warmup.max_tokens
            )
        finally:
            await engine.stop()

    with console.status(f"starting {model} and measuring..."):
        cold, warm = asyncio.run(measure())
    console.print(
        f"{model}: time to first token cold {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms "
        f"({cold / warm:.1f}x)",
        highlight=False,
    )


@config_app.command("check")
def check_config(config: ConfigOpt = None) -> None:
    """Validate a config file, including that every model source exists."""
    from cellar.deployments import resolve_deployments

    path = config_path(config)
    try:
        loaded = load_config(path)
        resolve_deployments(loaded, store_for(loaded), path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{path}: ok ({len(loaded.models)} model(s))", highlight=False)


@config_app.command("schema")
def print_schema() -> None:
    """Print the JSON schema of config files."""
    print(json.dumps(config_json_schema(), indent=2))
