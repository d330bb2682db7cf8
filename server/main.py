"""Running the gateway: config -> deployments -> uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import uvicorn

from cellar.auditlog import default_audit_path, default_batches_dir, default_canary_history
from cellar.config import CellarConfig, beside, load_config
from cellar.engines.choice import resolver_here
from cellar.engines.launch import ProcessLauncher, memory_estimate
from cellar.errors import ConfigError
from cellar.keys import default_keys_path
from cellar.net import is_loopback
from cellar.server.app import Access, create_app
from cellar.server.audit import AuditLog
from cellar.server.auth import Authenticator
from cellar.server.deployment import Limits
from cellar.server.hosts import allowed_hosts
from cellar.store import store_for

log = logging.getLogger("cellar.server")


AUTO_BUDGET_SHARE = 0.8


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def limits_of(config: CellarConfig) -> Limits:
    server = config.server
    budget = server.memory_budget
    if budget == "auto":
        budget = int(physical_memory() * AUTO_BUDGET_SHARE)
    return Limits(
        budget,
        server.keep_alive,
        server.load_timeout_s,
        server.drain_timeout,
        config.batches.background_share,
        config.batches.interactive_grace,
    )


def access_of(config: CellarConfig, config_file: Path) -> Access:
    """Keys, limits and the audit log; refuses an open gateway beyond loopback."""
    keys = beside(config_file, config.auth.keys_file) or default_keys_path()
    auth = Authenticator(config.auth, keys)
    host = config.server.host
    if config.auth.mode == "auto" and not auth.has_keys and not is_loopback(host):
        raise ConfigError(
            f"{config_file}: refusing to listen on {host} with no API keys: anyone who can "
            f"reach it could use every model. Create a key with `cellar keys create --name "
            f"ADMIN --role admin` (stored in {keys}), or, on a network you trust, set "
            f"`auth: {{mode: none}}` in {config_file}."
        )
    if config.auth.mode == "none" and not is_loopback(host):
        log.warning(
            "auth.mode is none: anyone who can reach %s:%d may use it", host, config.server.port
        )
    audit = None
    if config.audit.enabled:
        path = beside(config_file, config.audit.path) or default_audit_path()
        audit = AuditLog(config.audit, path)
        log.info(
            "audit log: %s%s",
            path,
            " (with prompt and response text)" if config.audit.log_content else "",
        )
    history = beside(config_file, config.canary.history) or default_canary_history()
    hosts = allowed_hosts(config.server.host, config.server.allowed_hosts)
    return Access(
        auth,
        config.limits,
        audit,
        config.audit.log_content,
        config.canary,
        history,
        hosts,
        config.drift,
        config.batches,
        beside(config_file, config.batches.dir) or default_batches_dir(),
    )


def tls_of(config: CellarConfig, config_file: Path) -> dict[str, str]:
    tls = config.server.tls
    if tls is None:
        return {}
    files = {}
    for key in ("certfile", "keyfile"):
        path = beside(config_file, getattr(tls, key))
        assert path is not None
        if not path.is_file():
            raise ConfigError(f"{config_file}: server.tls.{key}: {path} does not exist")
        files[f"ssl_{key}"] = str(path)
    return files


def serve(config_file: Path) -> None:
    """Validate the config (raises ConfigError naming file and key), then serve until stopped."""
    config = load_config(config_file)
    store = store_for(config)
    level = config.server.log_level
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    resolver = resolver_here(config, store, config_file)
    deployments = [resolver(spec) for spec in config.models]
    for deployment in deployments:
        log.info(
            "model %r: %s (%s)", deployment.spec.name, deployment.engine, deployment.engine_reason
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied call is noise
    limits = limits_of(config)
    tls = tls_of(config, config_file)
    access = access_of(config, config_file)
    app = create_app(
        deployments, store, ProcessLauncher(level), memory_estimate, limits, access, resolver
    )
    log.info(
        "serving %d model(s) on %s://%s:%d (API keys %s)",
        len(deployments),
        "https" if tls else "http",
        config.server.host,
        config.server.port,
        "required" if access.auth.required else "not required",
    )
    uvicorn.run(
        app,
        host=config.server.host,
        port=config.server.port,
        log_level=level,
        timeout_graceful_shutdown=10,
        # X-Forwarded-* only from the proxies the config names (uvicorn trusts loopback by
        # default, so any local user could forge the audit log's client address).
        proxy_headers=bool(config.server.trusted_proxies),
        forwarded_allow_ips=config.server.trusted_proxies or None,
        **tls,  # type: ignore[arg-type]
    )
