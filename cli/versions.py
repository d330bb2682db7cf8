"""`cellar models tag|untag|promote|rollback|history|gc|du`: versions, tags and disk use."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cellar.auditlog import (
    Served,
    default_audit_path,
    default_canary_history,
    read_lines,
    served_versions,
)
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
)
from cellar.cli.gateway import ApiKeyOpt, BaseUrlOpt, gateway_url
from cellar.cli.rollouts import guarded_promote, plan_of
from cellar.config import beside, config_path, load_config
from cellar.gc import config_references, disk_usage, plan_gc
from cellar.tags import history, promote, rollback, set_tag, untag
from cellar.versions import Move

WhyOpt = Annotated[str, typer.Option("--why", "-m", help="The reason, kept in the history")]


def _moved(name: str, entry: Move) -> None:
    before = "nothing" if entry.from_version is None else f"version {entry.from_version}"
    after = "nothing" if entry.to_version is None else f"version {entry.to_version}"
    console.print(
        f"{name}@{entry.tag}: {before} -> {after} ({entry.action} by {entry.user})",
        highlight=False,
    )


def tag_model(
    name: Annotated[str, typer.Argument(help="Model name")],
    version: Annotated[str, typer.Argument(help="Version number, a tag, or sha256:<prefix>")],
    tag: Annotated[str, typer.Argument(help="Tag to point at it, e.g. prod or staging")],
    why: WhyOpt = "",
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Point a tag at a version (a running gateway serving NAME@TAG switches to it)."""
    _moved(name, set_tag(open_store(store, config), name, version, tag, why))


def untag_model(
    name: Annotated[str, typer.Argument(help="Model name")],
    tag: Annotated[str, typer.Argument(help="Tag to remove")],
    why: WhyOpt = "",
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove a tag."""
    _moved(name, untag(open_store(store, config), name, tag, why))


def promote_model(
    name: Annotated[str, typer.Argument(help="Model name")],
    source: Annotated[str, typer.Option("--from", help="Tag whose version is promoted")],
    target: Annotated[str, typer.Option("--to", help="Tag to move to it")],
    why: WhyOpt = "",
    canary: Annotated[
        str | None,
        typer.Option(
            help="A guarded rollout by the running gateway: percent per step, e.g. 10,50,100"
        ),
    ] = None,
    step: Annotated[str, typer.Option(help="How long each rollout step lasts")] = "10m",
    shadow: Annotated[
        str | None,
        typer.Option(help="Mirror this share of requests to the candidate, e.g. 20%"),
    ] = None,
    max_latency_increase: Annotated[
        str, typer.Option(help="Rollout: p90 latency may rise this much")
    ] = "25%",
    max_error_increase: Annotated[
        str, typer.Option(help="Rollout: the error rate may rise this many points")
    ] = "1%",
    wait: Annotated[bool, typer.Option(help="Rollout: follow it until it ends")] = False,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Point one tag at the version another holds (e.g. --from staging --to prod); with
    --canary or --shadow, gradually, by the running gateway, rolled back if it does worse."""
    if canary is None and shadow is None:
        _moved(name, promote(open_store(store, config), name, source, target, why))
        return
    plan = plan_of(canary, step, shadow, max_latency_increase, max_error_increase)
    guarded_promote(gateway_url(config, base_url), api_key, name, source, target, plan, wait)


def rollback_model(
    name: Annotated[str, typer.Argument(help="Model name")],
    tag: Annotated[str, typer.Option("--tag", help="Tag to move back")] = "prod",
    why: WhyOpt = "",
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Move a tag back to the version it held before its last move."""
    _moved(name, rollback(open_store(store, config), name, tag, why))


def history_model(
    name: Annotated[str, typer.Argument(help="Model name")],
    store: StoreOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every version added and every tag move, oldest first, with who and why; then each
    version's live record while it served: requests, error rate, latency, golden prompts."""
    opened = open_store(store, config)
    refs = history(opened, name)
    served = _served(name, config)
    if as_json:
        rows = {version: figures.row() for version, figures in served.items()}
        print_json({"name": name, **refs.model_dump(mode="json"), "served": rows})
        return
    table = Table("time (UTC)", "user", "action", "tag", "from", "to", "sha256", "why")
    table.title = f"{name}: " + (
        ", ".join(f"{tag}={number}" for tag, number in sorted(refs.tags.items())) or "no tags"
    )
    for entry in refs.history:
        table.add_row(
            entry.time.strftime("%Y-%m-%d %H:%M:%S"),
            entry.user,
            entry.action,
            entry.tag or "",
            "" if entry.from_version is None else str(entry.from_version),
            "" if entry.to_version is None else str(entry.to_version),
            digest(entry.sha256 or "", 12),
            entry.why,
        )
    print_table(table)
    if served:
        live = Table(title=f"{name}: each version while it served (audit log, canary history)")
        columns = next(iter(served.values())).row()
        for column in ("version", *columns):
            live.add_column(column, justify="left" if column in ("version", "served") else "right")
        for version, figures in served.items():
            live.add_row(version, *figures.row().values())
        print_table(live)


def _served(name: str, config: Path | None) -> dict[str, Served]:
    """Each version's live record, from the audit log and canary history the config names (or
    the default ones)."""
    path = config_path(config)
    loaded = load_config(path) if path.is_file() else None
    audit = (beside(path, loaded.audit.path) if loaded else None) or default_audit_path()
    canary = (beside(path, loaded.canary.history) if loaded else None) or default_canary_history()
    return served_versions(name, read_lines(audit), canary)


def _references(config: ConfigOpt) -> list[str]:
    path = config_path(config)
    if config is None and not path.is_file():
        return []
    return config_references(load_config(path))


def gc_models(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    no_config: Annotated[
        bool,
        typer.Option("--no-config", help="No deployment pins a version (there is no config)"),
    ] = False,
) -> None:
    """Remove versions that no tag, rollback or deployment of the config references (the
    latest version of every model always stays)."""
    opened = open_store(store, config)
    if not no_config and config is None and not config_path(None).is_file():
        raise fail(
            f"no config at {config_path(None)}, so gc cannot tell which versions deployments "
            "pin; pass --config FILE, or --no-config if no deployment uses this store"
        )
    plan = plan_gc(opened, [] if no_config else _references(config))
    if not plan.remove:
        console.print(f"nothing to remove; {len(plan.keep)} version(s) in use")
        return
    table = Table("version", "format", "size", "created", title="unreferenced versions")
    for manifest in plan.remove:
        table.add_row(
            manifest.label,
            manifest.format,
            f"{manifest.size / 2**20:,.1f} MiB",
            manifest.created.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    freed = f"{plan.freed_bytes / 2**20:,.1f} MiB"
    if dry_run:
        console.print(f"would free {freed}")
        return
    if not yes and not typer.confirm(f"remove {len(plan.remove)} version(s), {freed}?"):
        raise typer.Exit(1)
    for manifest in plan.remove:
        opened.remove(manifest)
    console.print(f"removed {len(plan.remove)} version(s), freed {freed}")


def du_models(store: StoreOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Disk use by model, all versions together."""
    opened = open_store(store, config)
    rows = disk_usage(opened)
    plan = plan_gc(opened, _references(config))
    if as_json:
        print_json(
            {
                "store": str(opened.root),
                "models": [asdict(usage) for usage in rows],
                "total_bytes": sum(u.bytes for u in rows),
                "gc_would_free_bytes": plan.freed_bytes,
                "gc_would_remove": [m.label for m in plan.remove],
            }
        )
        return
    table = Table("model", "versions", "tags", "size", title=f"store: {opened.root}")
    for usage in rows:
        tags = ", ".join(f"{tag}={number}" for tag, number in sorted(usage.tags.items()))
        table.add_row(usage.name, str(usage.versions), tags, f"{usage.bytes / 2**20:,.1f} MiB")
    total = sum(u.bytes for u in rows)
    table.add_section()
    table.add_row("total", str(sum(u.versions for u in rows)), "", f"{total / 2**20:,.1f} MiB")
    print_table(table)
    console.print(
        f"`cellar models gc` would free {plan.freed_bytes / 2**20:,.1f} MiB "
        f"({len(plan.remove)} version(s))",
        highlight=False,
    )
