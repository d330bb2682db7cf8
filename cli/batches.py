"""`cellar batches list|show|cancel`: the batches the running gateway keeps (an admin key sees
every key's)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from cellar.cli.common import ConfigOpt, JsonOpt, console, print_json
from cellar.cli.gateway import ApiKeyOpt, BaseUrlOpt, admin_call, gateway_url

batches_app = typer.Typer(
    help="Batches running in the gateway (the Files and Batches API).", no_args_is_help=True
)
BatchArg = Annotated[str, typer.Argument(help="The batch's id (batch_...)")]


def _when(stamp: int | None) -> str:
    return f"{datetime.fromtimestamp(stamp, UTC):%Y-%m-%d %H:%M:%S}" if stamp else "-"


def _progress(batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    done = counts["completed"] + counts["failed"]
    share = 100 * done / counts["total"] if counts["total"] else 100.0
    return f"{done}/{counts['total']} ({share:.0f}%)"


@batches_app.command("list")
def list_batches(
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Unfinished batches and the last finished ones, with their progress."""
    answer = admin_call("GET", gateway_url(config, base_url), "/admin/batches", api_key)
    if as_json:
        print_json(answer)
        return
    if not answer["data"]:
        console.print("no batches")
        return
    table = Table(title="batches")
    for column in ("id", "owner", "endpoint", "status", "done", "failed", "running", "created"):
        table.add_column(column)
    for batch in answer["data"]:
        table.add_row(
            batch["id"],
            batch["owner"],
            batch["endpoint"],
            batch["status"],
            _progress(batch),
            str(batch["request_counts"]["failed"]),
            str(batch["running"]),
            _when(batch["created_at"]),
        )
    console.print(table)


@batches_app.command("show")
def show(
    batch: BatchArg,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One batch: status, progress, times and its result files."""
    answer = admin_call("GET", gateway_url(config, base_url), f"/v1/batches/{batch}", api_key)
    if as_json:
        print_json(answer)
        return
    table = Table(title=f"{answer['id']}: {answer['status']}", show_header=False)
    table.add_row("endpoint", answer["endpoint"])
    table.add_row("progress", _progress(answer))
    table.add_row("failed", str(answer["request_counts"]["failed"]))
    for name in ("created_at", "in_progress_at", "completed_at", "cancelled_at", "expires_at"):
        table.add_row(name.removesuffix("_at"), _when(answer[name]))
    table.add_row("input file", answer["input_file_id"])
    table.add_row("output file", answer["output_file_id"] or "-")
    table.add_row("error file", answer["error_file_id"] or "-")
    console.print(table)


@batches_app.command("cancel")
def cancel(
    batch: BatchArg,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start no more of its requests; those running finish, the rest go to its error file."""
    url = gateway_url(config, base_url)
    answer = admin_call("POST", url, f"/v1/batches/{batch}/cancel", api_key)
    console.print(f"{answer['id']}: {answer['status']} ({_progress(answer)} done)")
