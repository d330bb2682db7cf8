"""How the gateway reaches a worker, and nobody else does.

A worker serves HTTP on a Unix socket inside the gateway's private socket directory
(`cellar.rundir.socket_dir`: created 0700 under a random name), so no other local user can
connect to it, bind its address first, or impersonate it. Every request also carries a secret
made for that launch and handed to the worker in its environment (never its command line):
our llama.cpp worker refuses any request without it, on every route, and vLLM's server on its
API routes. A worker that knows the secret proves it at readiness: the gateway sends a fresh
challenge to `/health` and expects its HMAC back, so a process that took the address first
cannot pass for the worker. Over TCP (for remote workers) the secret and the proof are the
whole defence, the same code.

Each channel owns the two clients that talk through it (httpx for probes, warm-up and canary;
aiohttp for proxied traffic), built on first use and closed with the engine.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum
from pathlib import Path

import aiohttp
import httpx
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellar.errors import InvalidApiKey
from cellar.web import send_error

SECRET_ENV = "CELLAR_WORKER_SECRET"
"""The environment variable that hands a worker its secret."""
CHALLENGE_HEADER = "x-cellar-challenge"
PROOF_HEADER = "x-cellar-proof"
KEEPALIVE_S = 4.0
"""Below uvicorn's 5 s, so the gateway never reuses a connection the worker is closing."""
_UDS_HOST = "http://worker"


class Probe(StrEnum):
    READY = "ready"
    ABSENT = "absent"
    IMPOSTOR = "impostor"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def proof(secret: str, challenge: str) -> str:
    """What a worker holding `secret` answers to `challenge`."""
    return hmac.new(secret.encode(), challenge.encode(), hashlib.sha256).hexdigest()


def authorized(secret: str, header: str | None) -> bool:
    """Whether an `Authorization` header carries `secret` (compared in constant time)."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), secret.encode())


class Channel:
    """The address of one worker and the secret for it; see the module docstring."""

    def __init__(
        self, *, secret: str, uds: Path | None = None, port: int | None = None, proves: bool
    ) -> None:
        if (uds is None) == (port is None):
            raise ValueError("a channel is a Unix socket or a TCP port, not both or neither")
        self.secret = secret
        self.uds = uds
        self.proves = proves
        """Whether the worker answers the readiness challenge (ours does; vLLM's cannot)."""
        self.url = _UDS_HOST if uds is not None else f"http://127.0.0.1:{port}"
        self._http: httpx.AsyncClient | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def unix(cls, path: Path, *, proves: bool) -> Channel:
        return cls(secret=new_secret(), uds=path, proves=proves)

    @classmethod
    def tcp(cls, port: int, *, proves: bool) -> Channel:
        return cls(secret=new_secret(), port=port, proves=proves)

    @property
    def address(self) -> str:
        """Where the worker listens, for operators: `unix:/path` or `http://host:port`."""
        return f"unix:{self.uds}" if self.uds is not None else self.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    @property
    def http(self) -> httpx.AsyncClient:
        """httpx to the worker: relative URLs, the secret sent, never through a proxy."""
        if self._http is None:
            transport = httpx.AsyncHTTPTransport(
                uds=str(self.uds) if self.uds is not None else None,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
            )
            self._http = httpx.AsyncClient(
                base_url=self.url,
                transport=transport,
                headers=self.headers,
                timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
                trust_env=False,
            )
        return self._http

    @property
    def session(self) -> aiohttp.ClientSession:
        """aiohttp to the worker (absolute URLs under `url`): no pool limit, no read timeout
        (streams are long), a connect timeout, and the worker's bytes untouched."""
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self.uds is not None:
                connector = aiohttp.UnixConnector(
                    str(self.uds), limit=0, keepalive_timeout=KEEPALIVE_S
                )
            else:
                connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def probe(self, timeout_s: float = 2.0) -> Probe:
        """One readiness probe of `/health`, with a fresh challenge when the worker can prove
        the secret: READY, ABSENT (not answering 200 yet) or IMPOSTOR (answering, without the
        proof)."""
        challenge = secrets.token_hex(16)
        try:
            response = await self.http.get(
                "/health", headers={CHALLENGE_HEADER: challenge}, timeout=timeout_s
            )
        except httpx.HTTPError:
            return Probe.ABSENT
        if response.status_code != 200:
            return Probe.ABSENT
        if not self.proves:
            return Probe.READY
        answer = response.headers.get(PROOF_HEADER, "")
        if hmac.compare_digest(answer.encode(), proof(self.secret, challenge).encode()):
            return Probe.READY
        return Probe.IMPOSTOR

    async def close(self) -> None:
        http, session, self._http, self._session = self._http, self._session, None, None
        if http is not None:
            await http.aclose()
        if session is not None:
            await session.close()


class SecretGate:
    """ASGI middleware for a worker's app: every HTTP request must carry the launch's secret
    (401 otherwise, on every route), and a `/health` probe with a challenge gets the proof."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        if not secret:
            raise ValueError(f"a worker needs its secret in ${SECRET_ENV}")
        self.app = app
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not authorized(self.secret, headers.get("authorization")):
            await send_error(send, InvalidApiKey("This worker answers only its gateway."))
            return
        challenge = headers.get(CHALLENGE_HEADER)
        if challenge is None or scope["path"] != "/health":
            await self.app(scope, receive, send)
            return
        answer = (PROOF_HEADER.encode(), proof(self.secret, challenge[:128]).encode())

        async def send_with_proof(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), answer]}
            await send(message)

        await self.app(scope, receive, send_with_proof)
