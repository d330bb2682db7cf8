"""`cellar bundle export|verify|import`: moving Cellar and its models into an air-gapped site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import platformdirs
import typer

from cellar.cli.common import ConfigOpt, StoreOpt, console, err, open_store
from cellar.config import config_path

bundle_app = typer.Typer(
    help="Air-gapped bundles: models, wheels, sources and configs in one tar.",
    no_args_is_help=True,
)


MODELS_HELP = (
    "Comma-separated: NAME (its latest, tagged and roll-back versions), NAME@VERSION or NAME@TAG"
)


def default_wheel_cache() -> Path:
    """Where `make setup` keeps the llama-cpp-python wheel it built, and its source package."""
    return Path(platformdirs.user_cache_dir("cellar")) / "wheels"


@bundle_app.command("export")
def export(
    models: Annotated[str, typer.Option("--models", help=MODELS_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle to write (a .tar)")],
    configs: Annotated[
        list[Path] | None,
        typer.Option("--with-config", help="Config to ship (repeat; default: the one in use)"),
    ] = None,
    extras: Annotated[
        str, typer.Option("--extras", help="Cellar extras to ship wheels for, e.g. hf")
    ] = "",
    python_version: Annotated[
        str | None, typer.Option(help="Target Python, e.g. 3.11 (default: this one)")
    ] = None,
    target_platform: Annotated[
        str | None,
        typer.Option("--platform", help="Target pip platform, e.g. manylinux2014_x86_64"),
    ] = None,
    wheel_cache: Annotated[
        Path, typer.Option(help="Wheels built here before (llama-cpp-python's)")
    ] = default_wheel_cache(),
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write one tar with the models (manifests, lineage, tags), a wheelhouse of Cellar and
    every dependency built by pip for the target, llama-cpp-python's source package, the
    configs, and the sha256 of every file. Runs on a machine with access to the package index."""
    from cellar.bundle.bundles import Target, export_bundle
    from cellar.convert.llamacpp_tools import llama_cpp_version

    opened = open_store(store, config)
    shipped = configs
    if shipped is None:
        path = config_path(config)
        shipped = [path] if path.is_file() else []
    target = Target(python_version, target_platform)
    with console.status("exporting") as status:
        index = export_bundle(
            opened,
            [m.strip() for m in models.split(",") if m.strip()],
            out,
            shipped,
            extras=[e.strip() for e in extras.split(",") if e.strip()],
            target=target,
            wheel_cache=wheel_cache,
            llama_version=llama_cpp_version(),
            say=lambda line: status.update(line[:120]),
        )
    wheels = sum(1 for name in index["files"] if name.startswith("wheels/"))
    size = out.stat().st_size / 2**20
    console.print(
        f"wrote {out} ({size:,.1f} MiB): {len(index['models'])} model version(s), {wheels} "
        f"wheels for Python {index['target']['python']} on {index['target']['platform']}, "
        f"{len(shipped)} config(s)",
        highlight=False,
    )


@bundle_app.command("verify")
def verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.tar) or the directory it unpacked")],
) -> None:
    """Re-hash every file of a bundle; name each that is damaged, missing or unexpected."""
    from cellar.bundle.bundles import verify_bundle

    with console.status("verifying") as status:
        checked = verify_bundle(bundle, lambda line: status.update(line[:120]))
    if checked.problems:
        for problem in checked.problems:
            err.print(f"[red]FAIL[/] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"ok: {len(checked.index['files'])} files match {bundle}", highlight=False)


@bundle_app.command("import")
def import_(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.tar) or the directory it unpacked")],
    why: Annotated[str, typer.Option("--why", "-m", help="Kept in each model's history")] = "",
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Verify a bundle, then add its models to the store with their tags, and install the
    llama.cpp converters from its source package (for `cellar quantize` and `finetune`)."""
    from cellar.bundle.bundles import import_bundle

    opened = open_store(store, config)
    with console.status("importing") as status:
        lines = import_bundle(bundle, opened, lambda line: status.update(line[:120]), why)
    for line in lines:
        console.print(line, highlight=False)
    console.print(f"store: {opened.root}", highlight=False)
