"""Commands that talk to the running gateway's admin API (`cellar canary`, rollouts): where it
listens (from the config, or --base-url) and an admin key (CELLAR_API_KEY)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cellar.cli.common import fail
from cellar.config import config_path, load_config

BaseUrlOpt = Annotated[
    str | None, typer.Option(help="The gateway (default: host and port from the config)")
]
ApiKeyOpt = Annotated[
    str | None, typer.Option(envvar="CELLAR_API_KEY", help="An admin key, if keys are in use")
]


def gateway_url(config: Path | None, base_url: str | None) -> str:
    if base_url is not None:
        return base_url.rstrip("/")
    path = config_path(config)
    if config is not None and not path.is_file():
        raise fail(f"{path}: no such config file")
    server = load_config(path).server if path.is_file() else None
    scheme = "https" if server and server.tls else "http"
    host = server.host if server and server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"{scheme}://{host}:{server.port if server else 8000}"


def admin_call(
    method: str,
    base_url: str,
    path: str,
    api_key: str | None,
    *,
    json: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> Any:
    """The admin API's JSON answer; a clear failure when the gateway is not there or refuses."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.request(
            method, base_url + path, json=json, params=params, headers=headers, timeout=None,
            trust_env=False,
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the gateway at {base_url}: {exc}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise fail(f"{base_url}: HTTP {response.status_code}: {message}")
    return response.json()
