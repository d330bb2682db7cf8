"""Only Host headers the gateway is meant to be reached by (against DNS rebinding).

A web page in a browser on this machine can resolve its own domain to 127.0.0.1 and then call
the gateway with the browser's credentials of being local; such a request carries the page's
domain in `Host`. Loopback names, the bind address and `server.allowed_hosts` are answered;
anything else gets a 400 before any route runs. A request with no Host header (HTTP/1.0
tools) is answered: browsers always send one.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from cellar.errors import HostNotAllowed
from cellar.web import send_error

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


def allowed_hosts(bind: str, configured: list[str]) -> frozenset[str] | None:
    """The Host names to answer, or None for any (`*` configured)."""
    if "*" in configured:
        return None
    extra = {bind} - ANY_ADDRESS
    return LOOPBACK_NAMES | {name.lower() for name in (*configured, *extra)}


def host_name(header: str) -> str:
    """`Host` without its port: `[::1]:8000` is `::1`, `example:80` is `example`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """Pure ASGI: refuses a Host header outside `allowed` (None: any)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"host")
        name = host_name(header.decode("latin-1")) if header is not None else None
        if name is None or name in self.allowed:
            await self.app(scope, receive, send)
            return
        error = HostNotAllowed(
            f"This server does not answer to the host {name!r}; add it to server.allowed_hosts "
            "if clients are meant to reach it by that name."
        )
        await send_error(send, error)
