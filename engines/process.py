"""A worker that runs as a local child process serving HTTP on its private channel.

Shared by every engine launcher: spawning, log capture, readiness polling (which the worker
passes only by proving the launch's secret, where it can; see engines/channel.py), crash
detection and a stop that really frees memory (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from cellar.engines.base import Dialect, EngineState
from cellar.engines.channel import Channel, Probe
from cellar.engines.toolcalls import CallRewriter
from cellar.errors import EngineUnavailable
from cellar.protocol import CompletionBody, EmbeddingRequest

FATAL_PREFIX = "cellar-worker: fatal: "
"""A worker's last words: the line after this prefix is shown to operators and clients."""

LOG_LINE_MAX = 8192
"""Bytes of one worker log line that are kept."""
_LOG_TAIL = 40
_POLL_S = 0.2
_STOP_GRACE_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now on `host` (for a gateway or a baseline server, never a worker)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    """An Engine backed by a child process; see engines.base for the states."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        channel: Channel,
        dialect: Dialect,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.channel = channel
        self._dialect = dialect
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._state = EngineState.STOPPED
        self._error: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tail: deque[str] = deque(maxlen=_LOG_TAIL)
        self._fatal: str | None = None
        self._stopping = False
        self._log = logging.getLogger(f"cellar.worker.{name}")

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        self._state, self._error, self._fatal, self._stopping = (
            EngineState.STARTING,
            None,
            None,
            False,
        )
        self._tail.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        self._tasks = [
            asyncio.create_task(self._pump_logs(self._proc)),
            asyncio.create_task(self._watch(self._proc)),
        ]

    async def _pump_logs(self, proc: asyncio.subprocess.Process) -> None:
        """Read the worker's output to its end, whatever it writes: a line longer than
        LOG_LINE_MAX is logged cut short (a reader that stopped would fill the pipe and block
        the worker)."""
        assert proc.stdout is not None
        pending = b""
        while chunk := await proc.stdout.read(1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                self._log_line(raw)
            if len(pending) > LOG_LINE_MAX:
                self._log_line(pending)
                pending = b""
        self._log_line(pending)

    def _log_line(self, raw: bytes) -> None:
        line = raw[:LOG_LINE_MAX].decode("utf-8", "replace").rstrip()
        if not line:
            return
        if len(raw) > LOG_LINE_MAX:
            line += f" ... ({len(raw)} bytes)"
        self._tail.append(line)
        if line.startswith(FATAL_PREFIX):
            self._fatal = line.removeprefix(FATAL_PREFIX)
            self._log.error("%s", self._fatal)
        else:
            self._log.info("%s", line)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping:
            return
        await asyncio.sleep(0.05)  # let the log pump read the last lines
        self._state = EngineState.FAILED
        self._error = self._exit_reason(code)
        self._log.warning("worker exited: %s", self._error)

    def _exit_reason(self, code: int) -> str:
        if self._fatal:
            return self._fatal
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = " | ".join(list(self._tail)[-3:])
        return f"the worker for {self.name!r} {how}" + (f"; last output: {tail}" if tail else "")

    async def health(self) -> bool:
        return await self._probe() is Probe.READY

    async def _probe(self) -> Probe:
        if self._proc is None or self._proc.returncode is not None:
            return Probe.ABSENT
        return await self.channel.probe()

    def prepare(self, path: str, request: CompletionBody | EmbeddingRequest) -> dict[str, Any]:
        return self._dialect.prepare(path, request)

    def rewriter(self, request: CompletionBody) -> CallRewriter | None:
        return self._dialect.rewriter(request)

    async def load(self) -> tuple[int, int] | None:
        if self._state is not EngineState.READY:
            return None
        return await self._dialect.load(self.channel.http)

    async def wait_ready(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._state is EngineState.FAILED:
                raise EngineUnavailable(f"model {self.name!r} failed to load: {self._error}")
            if self._state is EngineState.STOPPED:
                raise EngineUnavailable(f"model {self.name!r} was stopped while loading")
            probe = await self._probe()
            if probe is Probe.READY:
                self._state = EngineState.READY
                return
            if probe is Probe.IMPOSTOR:
                await self._give_up(
                    f"the process answering at {self.channel.address} is not the worker Cellar "
                    "started (it cannot prove the launch's secret); refusing to send it requests"
                )
            if loop.time() >= deadline:
                await self._give_up(f"the worker did not become ready within {timeout_s:g} s")
            await asyncio.sleep(_POLL_S)

    async def _give_up(self, reason: str) -> NoReturn:
        self._error = reason
        await self.stop()
        self._state = EngineState.FAILED
        raise EngineUnavailable(f"model {self.name!r} failed to load: {reason}")

    async def stop(self) -> None:
        proc, self._stopping = self._proc, True
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.channel.close()
        if self.channel.uds is not None:
            self.channel.uds.unlink(missing_ok=True)
        self._state = EngineState.STOPPED
