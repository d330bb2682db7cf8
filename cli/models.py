"""`cellar models`: the local model store, conversions, and which engine serves a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cellar.cli.common import (
    ConfigOpt,
    JsonOpt,
    StoreOpt,
    console,
    digest,
    fail,
    open_store,
    print_json,
    print_table,
    progress_bar,
)
from cellar.config import config_path, load_config
from cellar.errors import StoreError
from cellar.versions import parse_ref

models_app = typer.Typer(help="The local model store.", no_args_is_help=True)


@models_app.command("import")
def import_model(
    path: Annotated[
        Path, typer.Argument(help="A .gguf file or a Hugging Face checkpoint directory")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Name in the store")],
    why: Annotated[str, typer.Option("--why", "-m", help="Why, kept in the history")] = "",
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Copy a model into the store as the next version of NAME (version 1 for a new name),
    recording its size and sha256. Bytes already stored under NAME are not stored again."""
    target = open_store(store, config)
    with progress_bar(f"importing {name}") as progress:
        result = target.import_file(path, name, progress, why)
    verb = "imported" if result.created else "already in the store:"
    label, sha = result.manifest.label, result.manifest.sha256
    console.print(f"{verb} [bold]{label}[/] sha256 {sha}", highlight=False, soft_wrap=True)


@models_app.command("list")
def list_models(store: StoreOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List every version of every model in the store, with its tags."""
    target = open_store(store, config)
    tags: dict[tuple[str, int], list[str]] = {}
    for name in target.names():
        latest = target.versions(name)[-1].version
        tags.setdefault((name, latest), []).append("latest")
        for tag, number in target.refs.read(name).tags.items():
            tags.setdefault((name, number), []).append(tag)
    manifests = target.list()
    tags_of = {m.label: sorted(tags.get((m.name, m.version), [])) for m in manifests}
    if as_json:
        rows = [
            {
                "name": manifest.name,
                "version": manifest.version,
                "tags": tags_of[manifest.label],
                "format": manifest.format,
                "size_bytes": manifest.size,
                "sha256": manifest.sha256,
                "created": manifest.created.isoformat(),
            }
            for manifest in manifests
        ]
        print_json({"store": str(target.root), "models": rows})
        return
    columns = ("name", "version", "tags", "format", "size", "sha256", "created")
    table = Table(*columns, title=f"store: {target.root}")
    for manifest in manifests:
        table.add_row(
            manifest.name,
            str(manifest.version),
            ", ".join(tags_of[manifest.label]),
            manifest.format,
            f"{manifest.size / 1e6:.1f} MB",
            digest(manifest.sha256),
            manifest.created.strftime("%Y-%m-%d %H:%M"),
        )
    print_table(table)


@models_app.command("show")
def show_model(
    name: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@TAG")],
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print a model's manifest as JSON, with its `chain`: the models it was made from, back
    to the original file."""
    opened = open_store(store, config)
    manifest = opened.get(name)
    chain = opened.chain(name)
    console.print_json(json.dumps({**manifest.model_dump(mode="json"), "chain": chain}))


@models_app.command("verify")
def verify_models(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to check: NAME (every version), NAME@VERSION or NAME@TAG"),
    ] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Re-hash stored models and compare with their manifests; exit 1 if any changed."""
    target = open_store(store, config)
    todo = [
        manifest
        for name in names or target.names()
        for manifest in (target.versions(name) if "@" not in name else [])
        or [target.get(name)]  # a reference, or a name not in the store: says why
    ]
    bad = 0
    for manifest in todo:
        try:
            with progress_bar(f"verifying {manifest.label}") as progress:
                target.verify_manifest(manifest, progress)
            console.print(f"[green]ok[/]   {manifest.label}", highlight=False)
        except StoreError as exc:
            bad += 1
            console.print(f"[red]FAIL[/] {exc}", highlight=False)
    if bad:
        raise typer.Exit(1)


@models_app.command("ps")
def models_ps(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """What the running gateway has loaded: state, pid, memory, uptime, load, errors."""
    import httpx

    path = config_path(config)
    server = load_config(path).server
    url = f"http://{server.host}:{server.port}/admin/models"
    try:
        view = httpx.get(url, timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise fail(f"no gateway answers at {url}: {exc}") from None
    if as_json:
        print_json(view)
        return
    budget = view.get("memory_budget_bytes", 0) / 2**30
    table = Table(title=f"{url} (memory budget {budget:.2f} GiB)")
    table.add_column("model", no_wrap=True)
    for header in ("engine", "state", "pid", "GiB", "up", "run", "wait", "restarts"):
        table.add_column(header, no_wrap=True)
    table.add_column("error")
    for m in view["models"]:
        uptime = "" if m["uptime_s"] is None else f"{m['uptime_s']:.0f}s"
        table.add_row(
            m["name"],
            m["engine"],
            m["state"],
            str(m["pid"] or ""),
            f"{m['memory_estimate_bytes'] / 2**30:.2f}",
            uptime,
            str(m["running"]),
            str(m["waiting"]),
            str(m["restarts"]),
            m["error"] or "",
        )
    print_table(table)


@models_app.command("convert")
def convert_model(
    name: Annotated[str, typer.Argument(help="A GGUF model in the store")],
    to: Annotated[str, typer.Option("--to", help="Target format: hf")],
    new_name: Annotated[
        str | None, typer.Option("--name", "-n", help="Name of the result (default: NAME-hf)")
    ] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log")
    ] = False,
) -> None:
    """Convert a stored GGUF into a Hugging Face checkpoint (for vLLM), kept with its lineage."""
    from cellar.convert.gguf_to_hf import convert_to_hf

    if to != "hf":
        raise fail(f"unknown target format {to!r}: `cellar models convert` writes `hf`")
    target = open_store(store, config)
    result = new_name or f"{parse_ref(name).name}-hf"  # NAME@prod -> a version of NAME-hf
    with console.status(f"converting {name}") as status:
        manifest = convert_to_hf(
            target, name, result, lambda step: status.update(f"{name}: {step}"), verbose
        )
    console.print(
        f"[bold]{manifest.name}[/]: Hugging Face checkpoint of {name}, "
        f"{manifest.size / 1e6:.0f} MB, sha256 {manifest.sha256}",
        highlight=False,
        soft_wrap=True,
    )


@models_app.command("explain")
def explain_model(
    name: Annotated[str, typer.Argument(help="A model in the config, or in the store")],
    config: ConfigOpt = None,
) -> None:
    """Which engine would serve a model on this machine, and why."""
    from cellar.config import ModelDeployment
    from cellar.deployments import resolve_one
    from cellar.engines.choice import EngineChooser
    from cellar.hardware import detect
    from cellar.store import store_for

    path = config_path(config)
    loaded = load_config(path)
    specs = {spec.name: (index, spec) for index, spec in enumerate(loaded.models)}
    if name in specs:
        index, spec = specs[name]
        key = f"{path}: models[{index}]"
    else:  # a store model with the defaults
        spec = ModelDeployment(name=name, source=f"store:{name}")
        key = f"store model {name!r}"
    hardware = detect()
    resolved = resolve_one(spec, key, store_for(loaded), path.parent, EngineChooser(hardware))
    console.print(f"[bold]{name}[/]: {resolved.engine}", highlight=False)
    console.print(f"  serves: {resolved.artifact.label} ({resolved.artifact.format})")
    console.print(f"  why:    {resolved.engine_reason}", highlight=False, soft_wrap=True)
    apple = "; Apple silicon" if hardware.apple_silicon else ""
    console.print(f"  machine: {hardware.describe_gpus()}{apple}", highlight=False)
