"""The fast tier's stand-in worker and an in-process gateway in front of it.

`EchoEngine` implements the gateway's Engine protocol over the benchmarks' echo endpoint
(cellar.benchmarks.suite.echo), served from the test's own event loop: a real OpenAI-shaped
HTTP server on a private Unix socket, as a worker's, that answers at once (or after
`delay_s`), with no model behind it.
`serve_gateway` runs the real gateway app (create_app) under uvicorn in the same loop, so the
supervisor, admission, proxy and metrics are driven over real HTTP in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn

from cellar.benchmarks.suite.echo import Echo
from cellar.config import ModelDeployment
from cellar.config_access import AuthSettings, BatchSettings, LimitSettings
from cellar.deployments import Artifact, ResolvedDeployment, Resolver
from cellar.engines.base import EngineState
from cellar.engines.channel import Channel
from cellar.engines.process import free_port
from cellar.errors import EngineUnavailable
from cellar.protocol import CompletionBody, EmbeddingRequest
from cellar.rundir import socket_path
from cellar.server.app import Access, create_app
from cellar.server.auditwriter import AuditLog
from cellar.server.auth import Authenticator
from cellar.server.deployment import Limits
from cellar.store import ModelStore


@dataclass
class EchoEngine:
    """A worker stand-in: the echo endpoint on a free loopback port, started and stopped with
    the engine. `fail_start` makes start() fail; `crash()` makes it die as a worker would."""

    name: str
    delay_s: float = 0.0
    fail_start: str | None = None
    fail_after: int | None = None
    """Completions after this many fail in turn: a 503, an error event, a dropped stream."""
    state: EngineState = EngineState.STOPPED
    error: str | None = None
    echo: Echo = field(init=False)
    channel: Channel = field(init=False)
    _server: asyncio.Server | None = None

    def __post_init__(self) -> None:
        self.echo = Echo(self.fail_after, self.delay_s)
        self.channel = Channel.unix(socket_path(), proves=False)

    @property
    def pid(self) -> int | None:
        return None

    async def start(self) -> None:
        self.state = EngineState.STARTING
        if self.fail_start is not None:
            self.state, self.error = EngineState.FAILED, self.fail_start
            return
        self._server = await asyncio.start_unix_server(self.echo.handle, self.channel.uds)

    async def wait_ready(self, timeout_s: float) -> None:
        if self.state is EngineState.FAILED:
            raise EngineUnavailable(f"model {self.name!r} failed to start: {self.error}")
        self.state = EngineState.READY

    async def health(self) -> bool:
        return self.state is EngineState.READY

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self.channel.close()
        if self.state is not EngineState.FAILED:
            self.state = EngineState.STOPPED

    @property
    def running(self) -> bool:
        """Its endpoint listens (started and not stopped or crashed)."""
        return self._server is not None

    def crash(self, reason: str = "killed by the test") -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.state, self.error = EngineState.FAILED, reason

    def prepare(self, path: str, request: CompletionBody | EmbeddingRequest) -> dict[str, Any]:
        return request.model_dump(exclude_unset=True, by_alias=True)

    def rewriter(self, request: CompletionBody) -> None:
        return None

    async def load(self) -> tuple[int, int] | None:
        return None


def resolved(name: str, tmp: Path, **spec: Any) -> ResolvedDeployment:
    """A llama.cpp deployment of a (never loaded) file, for the stand-in to serve; no warm-up
    unless asked for."""
    path = tmp / f"{name}.gguf"
    path.touch()
    spec.setdefault("warmup", {"enabled": False})
    deployment = ModelDeployment(name=name, source=str(path), **spec)
    return ResolvedDeployment(
        deployment, "llamacpp", "the test says so", Artifact(path, "gguf", None), None
    )


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait, in the test's event loop, until `check()` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


@dataclass
class Launches:
    """The launcher the supervisor calls: a new EchoEngine per start, all kept for the test."""

    delay_s: float = 0.0
    fail_start: str | None = None
    fail_after: int | None = None
    engines: list[EchoEngine] = field(default_factory=list)

    def __call__(self, deployment: ResolvedDeployment) -> EchoEngine:
        name = deployment.spec.name
        engine = EchoEngine(name, self.delay_s, self.fail_start, self.fail_after)
        self.engines.append(engine)
        return engine


@dataclass
class InProcessGateway:
    base_url: str
    app: Any
    http: httpx.AsyncClient

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        text = (await self.http.get("/metrics")).text
        want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in text.splitlines():
            if not labels and line.startswith(f"{name} "):
                return float(line.rsplit(" ", 1)[1])
            if line.startswith(f"{name}{{"):
                found = line[len(name) + 1 : line.index("}")]
                if ",".join(sorted(found.split(","))) == want:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextlib.asynccontextmanager
async def serve_gateway(
    deployments: list[ResolvedDeployment],
    tmp: Path,
    launcher: Callable[[ResolvedDeployment], EchoEngine],
    *,
    budget_bytes: int = 2**40,
    estimate: int = 2**20,
    keep_alive_s: float = -1,
    load_timeout_s: float = 10.0,
    resolver: Resolver | None = None,
    auth_mode: Literal["auto", "keys", "none"] = "none",
    audit: AuditLog | None = None,
    batches: BatchSettings | None = None,
) -> AsyncIterator[InProcessGateway]:
    """The real gateway app on a free loopback port, in this event loop; its key file is
    `tmp/keys.json` (no keys are asked for unless `auth_mode` says so)."""
    access = Access(
        Authenticator(AuthSettings(mode=auth_mode), tmp / "keys.json"),
        LimitSettings(),
        audit,
        canary_history=tmp / "canary.jsonl",
        batches=batches or BatchSettings(),
        batches_dir=tmp / "batches",
    )
    settings = access.batches
    limits = Limits(
        budget_bytes,
        keep_alive_s,
        load_timeout_s,
        background_share=settings.background_share,
        interactive_grace_s=settings.interactive_grace,
    )
    store = ModelStore(tmp / "store")
    app = create_app(deployments, store, launcher, lambda _: estimate, limits, access, resolver)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
            yield InProcessGateway(url, app, http)
    finally:
        server.should_exit = True
        await task
