"""Running the gateway: config -> deployments -> uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import uvicorn

from cellar.config import CellarConfig, load_config
from cellar.store import store_for
from engines.choice import resolve_here
from engines.launch import ProcessLauncher, memory_estimate
from server.app import create_app
from server.deployment import Limits

log = logging.getLogger("cellar.server")


AUTO_BUDGET_SHARE = 0.8


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def limits_of(config: CellarConfig) -> Limits:
    server = config.server
    budget = server.memory_budget
    if budget == "auto":
        budget = int(physical_memory() * AUTO_BUDGET_SHARE)
    return Limits(budget, server.keep_alive, server.load_timeout_s)


def serve(config_file: Path) -> None:
    """Validate the config (raises ConfigError naming file and key), then serve until stopped."""
    config = load_config(config_file)
    store = store_for(config)
    level = config.server.log_level
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    deployments = resolve_here(config, store, config_file)
    for deployment in deployments:
        log.info(
            "model %r: %s (%s)", deployment.spec.name, deployment.engine, deployment.engine_reason
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied call is noise
    limits = limits_of(config)
    app = create_app(deployments, store, ProcessLauncher(level), memory_estimate, limits)
    log.info(
        "serving %d model(s) on http://%s:%d",
        len(deployments),
        config.server.host,
        config.server.port,
    )
    uvicorn.run(
        app,
        host=config.server.host,
        port=config.server.port,
        log_level=level,
        timeout_graceful_shutdown=10,
    )
