"""`cellar models promote ... --canary 10,50,100` (a guarded rollout, run by the gateway) and
`cellar models rollout status|pause|resume|abort NAME`."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from cellar.cli.common import ConfigOpt, JsonOpt, console, fail, print_json
from cellar.cli.gateway import ApiKeyOpt, BaseUrlOpt, admin_call, gateway_url

rollout_app = typer.Typer(help="Guarded rollouts running in the gateway.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The deployment's name (as requests name it)")]
DONE = ("promoted", "rolled back", "aborted", "shadowed")


def percent(text: str, option: str) -> int:
    try:
        value = int(text.strip().removesuffix("%"))
    except ValueError:
        raise fail(f"{option} {text!r}: give a whole percentage, e.g. 20%") from None
    if not 0 < value <= 100:
        raise fail(f"{option} {text!r}: give a percentage from 1 to 100")
    return value


def plan_of(
    canary: str | None, step: str, shadow: str | None, latency: str, errors: str
) -> dict[str, Any]:
    """The rollout plan the admin API takes, from the command's options."""
    steps = [percent(s, "--canary") for s in canary.split(",")] if canary else []
    return {
        "steps": steps,
        "step": step,
        "shadow": percent(shadow, "--shadow") if shadow else 0,
        "bounds": {
            "max_latency_increase": percent(latency, "--max-latency-increase") / 100,
            "max_error_rate_increase": percent(errors, "--max-error-increase") / 100,
        },
    }


def show(rollout: dict[str, Any]) -> None:
    table = Table(
        title=f"{rollout['deployment']}: {rollout['current']} -> {rollout['candidate']} "
        f"({rollout['from']} to {rollout['to']}): {rollout['state']}"
    )
    table.add_column("step", justify="right")
    table.add_column("share", justify="right")
    table.add_column("served (current / candidate)", justify="right")
    for index, served in enumerate(rollout["served"], start=1):
        table.add_row(
            str(index), f"{served['share']}%", f"{served['current']} / {served['candidate']}"
        )
    if rollout["state"] in ("starting", "running", "paused"):
        now, elapsed = rollout["this_step"], rollout["step_elapsed_s"]
        table.add_row(
            f"{rollout['step']} (now, {elapsed:.0f} of {rollout['step_s']:.0f} s)",
            f"{rollout['share']}%",
            f"{now['current']} / {now['candidate']}",
        )
    console.print(table)
    for decision in rollout["decisions"]:
        console.print(f"- {decision}", highlight=False)
    if rollout.get("shadow"):
        console.print(f"shadow: {rollout['shadow']}", highlight=False)


def guarded_promote(
    url: str, api_key: str | None, name: str, source: str, target: str, plan: dict[str, Any],
    wait: bool,
) -> None:  # fmt: skip
    body = {"model": name, "from": source, "to": target, "plan": plan}
    rollout = admin_call("POST", url, "/admin/rollouts", api_key, json=body)
    deployment = rollout["deployment"]
    console.print(
        f"rollout of {name}@{target} to {rollout['candidate']} started on {deployment!r}: "
        f"steps {plan['steps'] or 'none'}, {plan['step']} each"
        + (f", shadow {plan['shadow']}%" if plan["shadow"] else ""),
        highlight=False,
    )
    if not wait:
        console.print(f"`cellar models rollout status {deployment}` follows it", highlight=False)
        return
    seen = 0
    while rollout["state"] not in DONE:
        time.sleep(2)
        rollout = admin_call("GET", url, f"/admin/rollouts/{deployment}", api_key)
        for decision in rollout["decisions"][seen:]:
            console.print(f"- {decision}", highlight=False)
        seen = len(rollout["decisions"])
    console.print(f"{rollout['state']}", highlight=False)
    if rollout["state"] != "promoted" and plan["steps"]:
        raise typer.Exit(1)


@rollout_app.command("status")
def status(
    name: NameArg, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """The rollout's steps, traffic, decisions and state."""
    rollout = admin_call("GET", gateway_url(config, base_url), f"/admin/rollouts/{name}", api_key)
    if as_json:
        print_json(rollout)
        return
    show(rollout)


def _steer(action: str, help_text: str) -> None:
    def command(
        name: NameArg, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
        config: ConfigOpt = None,
    ) -> None:  # fmt: skip
        url = gateway_url(config, base_url)
        rollout = admin_call("POST", url, f"/admin/rollouts/{name}/{action}", api_key)
        console.print(f"{rollout['deployment']}: {action} sent ({rollout['state']})")

    command.__doc__ = help_text
    rollout_app.command(action)(command)


_steer("pause", "Hold the current step (the shares stay; its clock stops).")
_steer("resume", "Let the held step run on.")
_steer("abort", "Roll back now: the candidate stops once its requests finish.")
