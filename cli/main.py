"""The `cellar` app, `serve`, `warmup` and `config`; each other command group has its own
module in cellar/cli/."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cellar.cli.batches import batches_app
from cellar.cli.bench import bench_app
from cellar.cli.bundle import bundle_app
from cellar.cli.common import Commands, ConfigOpt, console, fail
from cellar.cli.drift import drift
from cellar.cli.finetune import finetune
from cellar.cli.keys import keys_app
from cellar.cli.models import models_app
from cellar.cli.ops import audit_app, canary, tools_app
from cellar.cli.quantize import quantize
from cellar.cli.rollouts import rollout_app
from cellar.cli.versions import (
    du_models,
    gc_models,
    history_model,
    promote_model,
    rollback_model,
    tag_model,
    untag_model,
)
from cellar.config import config_json_schema, config_path, load_config
from cellar.store import store_for

app = typer.Typer(
    cls=Commands,
    help="Cellar: a private, on-premise, OpenAI-compatible LLM server.",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(tools_app, name="tools")
app.add_typer(bundle_app, name="bundle")
app.add_typer(batches_app, name="batches")
app.command()(canary)
models_app.command("tag")(tag_model)
models_app.command("untag")(untag_model)
models_app.command("promote")(promote_model)
models_app.command("rollback")(rollback_model)
models_app.command("history")(history_model)
models_app.add_typer(rollout_app, name="rollout")
models_app.command("gc")(gc_models)
models_app.command("du")(du_models)
app.command()(quantize)
app.command()(finetune)
app.command()(drift)


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Start the gateway (host and port from the config, or $CELLAR_HOST / $CELLAR_PORT)."""
    from cellar.server.main import serve as run_gateway  # the CLI is the one place that starts it

    run_gateway(config_path(config))


@app.command()
def warmup(
    model: Annotated[str, typer.Argument(help="A model name from the config")],
    config: ConfigOpt = None,
) -> None:
    """Start the model's worker, then print time to first token cold (first request) and warm."""
    import asyncio

    from cellar.engines.choice import resolve_here
    from cellar.engines.launch import ProcessLauncher
    from cellar.engines.warmup import cold_and_warm

    path = config_path(config)
    loaded = load_config(path)
    deployments = {d.spec.name: d for d in resolve_here(loaded, store_for(loaded), path)}
    if model not in deployments:
        raise fail(f"no model {model!r} in {path} (models: {', '.join(deployments)})")
    deployment = deployments[model]
    prompts = deployment.spec.warmup.prompts or ["Hello"]

    async def measure() -> tuple[float, float]:
        engine = ProcessLauncher(loaded.server.log_level)(deployment)
        await engine.start()
        try:
            await engine.wait_ready(deployment.spec.startup_timeout_s)
            return await cold_and_warm(
                engine.channel.http, model, prompts, deployment.spec.warmup.max_tokens
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
    from cellar.engines.choice import resolve_here

    path = config_path(config)
    loaded = load_config(path)
    resolve_here(loaded, store_for(loaded), path)
    console.print(f"{path}: ok ({len(loaded.models)} model(s))", highlight=False)


@config_app.command("schema")
def print_schema() -> None:
    """Print the JSON schema of config files."""
    print(json.dumps(config_json_schema(), indent=2))
