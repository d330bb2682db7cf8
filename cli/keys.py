"""`cellar keys`: create, list and revoke API keys (the gateway picks changes up at once)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cellar.cli.common import ConfigOpt, JsonOpt, console, err, fail, print_json, print_table
from cellar.config import beside, config_path, load_config
from cellar.keys import KeyFile, default_keys_path, describe, parse_expiry

keys_app = typer.Typer(help="API keys for the gateway.", no_args_is_help=True)

KeysFileOpt = Annotated[
    Path | None,
    typer.Option("--keys-file", help="Key file (default: the config's auth.keys_file)"),
]


def keys_path(explicit: Path | None, config: Path | None) -> Path:
    """--keys-file, else the config's `auth.keys_file`, else $CELLAR_KEYS or the default."""
    if explicit is not None:
        return explicit
    path = config_path(config)
    if path.is_file():
        configured = load_config(path).auth.keys_file
        if configured is not None:
            return beside(path, configured) or configured
    elif config is not None:
        raise fail(f"{path}: no such config file")
    return default_keys_path()


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who uses it (an app or a person)")],
    models: Annotated[
        str | None, typer.Option(help="Models it may use, comma-separated (default: all)")
    ] = None,
    role: Annotated[str, typer.Option(help="user, or admin (may also call /admin)")] = "user",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (prompt + completion)")] = None,
    priority: Annotated[
        int,
        typer.Option(
            min=-100,
            max=1000,
            help="Queue priority of its requests: lower goes first; above 0 is background "
            "work, which takes only the slots interactive requests leave",
        ),
    ] = 0,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime (90d, 12h) or an ISO date (default: never)")
    ] = None,
    keys_file: KeysFileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make a key and print it once: it is stored only as a salted hash."""
    if role not in ("user", "admin"):
        raise fail(f"--role {role!r}: expected user or admin")
    path = keys_path(keys_file, config)
    now = datetime.now(UTC)
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    when = parse_expiry(expires, now) if expires else None
    record, key = KeyFile(path).create(
        name,
        role=role,  # type: ignore[arg-type]
        models=allowed,
        rpm=rpm,
        tpm=tpm,
        expires=when,
        now=now,
        priority=priority,
    )
    err.print(
        f"created key {record.id} for {record.name!r} ({record.role}) in {path}. "
        "Copy it now: it is not stored and cannot be shown again.",
        highlight=False,
    )
    print(key)


@keys_app.command("list")
def list_keys(
    keys_file: KeysFileOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Every key: name, role, models, limits, state (never the key itself)."""
    path = keys_path(keys_file, config)
    records = KeyFile(path).load()
    if as_json:
        now = datetime.now(UTC)
        keys = [
            {**r.model_dump(mode="json", exclude={"salt", "hash", "kdf"}), "state": r.state(now)}
            for r in records
        ]
        print_json({"keys_file": str(path), "keys": keys})
        return
    if not records:
        console.print(f"no keys in {path}", highlight=False)
        return
    now = datetime.now(UTC)
    rows = [describe(r, now) for r in records]
    table = Table(title=str(path))
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    print_table(table)


@keys_app.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="Name or id of the key")],
    keys_file: KeysFileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a key; a running gateway refuses it from its next request."""
    path = keys_path(keys_file, config)
    revoked = KeyFile(path).revoke(key)
    for record in revoked:
        console.print(f"revoked {record.id} ({record.name})", highlight=False)
