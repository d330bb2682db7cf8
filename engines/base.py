"""The gateway's whole view of an engine: one small Protocol.

An engine is a worker process (or a remote server) that speaks the OpenAI HTTP protocol over its
`channel`, which only the gateway can use (engines/channel.py). The gateway never runs model
code itself; it starts, watches and stops engines.

States:
    stopped  -> start() -> starting -> (loaded) -> ready
    starting -> failed   the process exited or did not become healthy in time; `error` says why
    ready    -> failed   the process died while serving
    any      -> stop()   -> stopped
Concurrency: `start` and `stop` are not called concurrently for one engine (the supervisor
serializes them per deployment). `state`, `error`, `channel` and `health` are safe at any time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

import httpx

from cellar.config import ModelDeployment
from cellar.deployments import Artifacts, EngineChoice, EngineName, ResolvedDeployment
from cellar.engines.channel import Channel
from cellar.engines.toolcalls import CallRewriter
from cellar.hardware import Hardware
from cellar.protocol import CompletionBody, EmbeddingRequest
from cellar.store import Format


class EngineState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class Engine(Protocol):
    """One model's engine, as the gateway sees it."""

    @property
    def state(self) -> EngineState:
        """Where the engine is in its life (see the module docstring)."""
        ...

    @property
    def error(self) -> str | None:
        """Why the engine failed, naming the model file and the cause; None otherwise."""
        ...

    @property
    def pid(self) -> int | None:
        """The worker's process id; None before start or for an engine on another host."""
        ...

    @property
    def channel(self) -> Channel:
        """The private way to its OpenAI-compatible API, with the clients that use it."""
        ...

    async def start(self) -> None:
        """Launch the engine; returns once the process runs (not yet ready)."""
        ...

    async def wait_ready(self, timeout_s: float) -> None:
        """Block until ready; raise EngineUnavailable with the reason if it fails or times out."""
        ...

    async def health(self) -> bool:
        """One health probe: True when the engine answers and is ready."""
        ...

    async def stop(self) -> None:
        """Stop the engine and free its memory (the process is gone when this returns)."""
        ...

    def prepare(self, path: str, request: CompletionBody | EmbeddingRequest) -> dict[str, Any]:
        """The JSON body to send this engine for a validated OpenAI request to `path`: engines
        differ in how they take some features (e.g. a grammar for structured output). May
        raise InvalidRequest."""
        ...

    def rewriter(self, request: CompletionBody) -> CallRewriter | None:
        """How the gateway must rewrite this engine's answers to `request` (tool calls read
        out of the text, when the engine does not do it as Cellar does); None: as they are."""
        ...

    async def load(self) -> tuple[int, int] | None:
        """(running, waiting) requests inside the engine; None when it cannot tell now."""
        ...


class Dialect(Protocol):
    """What differs between engines that all speak OpenAI's protocol over HTTP."""

    def prepare(self, path: str, request: CompletionBody | EmbeddingRequest) -> dict[str, Any]:
        """See Engine.prepare."""
        ...

    def rewriter(self, request: CompletionBody) -> CallRewriter | None:
        """See Engine.rewriter."""
        ...

    async def load(self, client: httpx.AsyncClient) -> tuple[int, int] | None:
        """See Engine.load; `client` is the channel's (relative URLs)."""
        ...


class EngineKind(Protocol):
    """One kind of engine (llama.cpp, vLLM), as every part of Cellar that differs by engine
    needs it: the chooser, the launcher, the memory budget, admission, `/admin/system` and
    adapters. Each kind is one module (`engines/<kind>/kind.py`), listed once in
    `engines/kinds.py`; nothing else branches on an engine's name.

    `choose` raises EngineChoiceError saying why the kind cannot serve a model here; the other
    methods take a deployment this kind was chosen for and must not block on I/O for long
    (they run on the gateway's event loop), except `launch`'s engine, which starts later.
    """

    name: EngineName
    """The value of a deployment's `engine` key."""
    adapter_form: Format
    """The store format of the LoRA adapters it loads."""

    def choose(
        self, spec: ModelDeployment, artifacts: Artifacts, hardware: Hardware, why: str
    ) -> EngineChoice:
        """Which form of the model it would serve here, and why; or EngineChoiceError."""
        ...

    def launch(self, deployment: ResolvedDeployment, log_level: str) -> Engine:
        """A not-yet-started engine for the deployment."""
        ...

    def memory_bytes(self, deployment: ResolvedDeployment) -> int:
        """Estimated RAM of its worker (the memory budget counts it)."""
        ...

    def concurrency(self, deployment: ResolvedDeployment) -> int:
        """Requests it serves at once; beyond them, the gateway queues."""
        ...

    def context_window(self, deployment: ResolvedDeployment) -> int | None:
        """Tokens of prompt + completion one request may use; None when unknown."""
        ...

    def gpu_claims(self, deployment: ResolvedDeployment) -> dict[int, float]:
        """Share of each NVIDIA GPU its worker reserves while loaded."""
        ...

    def version(self, deployment: ResolvedDeployment) -> str | None:
        """The serving software and its version (`/admin/system`)."""
        ...
