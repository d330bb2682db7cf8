"""The operators' webhook (`canary.webhook`): one JSON POST per alert, Slack-style `text` first.
The URL is a secret (it often carries a token): it is never logged, and a failure to deliver
is logged without it."""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger("cellar.webhook")


async def notify(http: httpx.AsyncClient, url: str | None, body: dict[str, Any], what: str) -> None:
    """POST `body` to `url` (nothing when unset); `what` names the sender in the log."""
    if not url:
        return
    try:
        response = await http.post(url, json=body, timeout=10)
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        log.error("%s webhook failed: HTTP %d", what, exc.response.status_code)
    except httpx.HTTPError as exc:
        log.error("%s webhook failed: %s", what, type(exc).__name__)
