"""Embeddings batched across requests: one thread owns an embedding context and packs the
inputs of every waiting request into each encode, as many whole inputs as the batch holds.

Inputs are taken in arrival order, so a 2,000-input request does not hold back a one-line
query that arrives after it for more than one batch: each encode serves the oldest inputs
first, and a request's vectors are handed back as soon as its last input is encoded. A
cancelled request's inputs that are not encoded yet are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cellar.engines.llamacpp.jobs import drain
from cellar.engines.llamacpp.native import EmbeddingContext
from cellar.errors import EngineFailed

log = logging.getLogger("cellar.worker.embedder")

Vector = npt.NDArray[np.float32]


@dataclass
class EmbedJob:
    inputs: list[list[int]]
    normalize: bool
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[list[Vector]]
    vectors: list[Vector | None] = field(default_factory=list)
    left: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.inputs)
        self.left = len(self.inputs)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class EmbedCounters:
    inputs: int = 0
    tokens: int = 0
    batches: int = 0


class Embedder:
    """Owns the encode thread; `embed` is called from the event loop."""

    def __init__(self, context: EmbeddingContext) -> None:
        self._ctx = context
        self._incoming: queue.Queue[EmbedJob | None] = queue.Queue()
        self._line: deque[tuple[EmbedJob, int]] = deque()
        """(job, input index), oldest first."""
        self._taken: list[tuple[EmbedJob, int]] = []
        """The inputs in the batch being encoded."""
        self.counters = EmbedCounters()
        self._thread = threading.Thread(target=self._run, name="embed", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._line) + self._incoming.qsize()

    async def embed(self, inputs: list[list[int]], normalize: bool) -> list[Vector]:
        """One vector per input, in order (each no longer than the context's batch)."""
        loop = asyncio.get_running_loop()
        job = EmbedJob(inputs, normalize, loop, loop.create_future())
        self._incoming.put(job)
        try:
            return await job.done
        finally:
            job.cancel()

    def close(self) -> None:
        self._incoming.put(None)
        self._thread.join(timeout=30)

    # -- the encode thread ------------------------------------------------------------------

    def _run(self) -> None:
        while self._pull(block=not self._line):
            try:
                self._encode_next()
            except Exception as exc:  # the thread must outlive any one failure
                log.exception("embedding batch failed")
                self._fail_all(str(exc))

    def _pull(self, block: bool) -> bool:
        def take(job: EmbedJob) -> None:
            self._line.extend((job, i) for i in range(len(job.inputs)))

        return drain(self._incoming, block, take)

    def _encode_next(self) -> None:
        ctx, line = self._ctx, self._line
        taken = self._taken = []
        while line:
            job, index = line[0]
            if job.cancelled:
                line.popleft()
                continue
            tokens = job.inputs[index]
            if not ctx.fits(len(tokens)):
                if not taken:  # longer than a whole batch: it never fits (the service checks)
                    self._refuse(job, f"an input of {len(tokens)} tokens exceeds the batch")
                    continue
                break
            line.popleft()
            ctx.add(tokens)
            taken.append((job, index))
            self.counters.tokens += len(tokens)
        if not taken:
            return
        vectors = ctx.run()
        self._taken = []
        self.counters.batches += 1
        self.counters.inputs += len(taken)
        for (job, index), vector in zip(taken, vectors, strict=True):
            if job.normalize:
                norm = float(np.linalg.norm(vector))
                vector = vector / norm if norm > 0 else vector
            job.vectors[index] = vector
            job.left -= 1
            if job.left == 0:
                done = [v for v in job.vectors if v is not None]
                job.loop.call_soon_threadsafe(_resolve, job.done, done)

    def _refuse(self, job: EmbedJob, reason: str) -> None:
        kept = [item for item in self._line if item[0] is not job]
        self._line.clear()
        self._line.extend(kept)
        job.loop.call_soon_threadsafe(_reject, job.done, EngineFailed(reason))

    def _fail_all(self, reason: str) -> None:
        error = EngineFailed(f"llama.cpp failed while embedding: {reason}")
        failed = {id(job): job for job, _ in [*self._taken, *self._line]}
        self._taken = []
        self._line.clear()
        for job in failed.values():
            job.loop.call_soon_threadsafe(_reject, job.done, error)


def _resolve(future: asyncio.Future[list[Vector]], vectors: list[Vector]) -> None:
    if not future.done():
        future.set_result(vectors)


def _reject(future: asyncio.Future[list[Vector]], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
