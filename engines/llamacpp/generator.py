"""Token generation on llama-cpp-python, off the event loop.

One decode thread owns the llama.cpp context. Requests wait in FIFO order and run one at a time
to completion: a new request never cuts off a running stream. Each job hands its text to the
asyncio side through its own queue; cancelling a job stops it at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import llama_cpp

from cellar.errors import EngineFailed
from engines.llamacpp.textstream import TextStream

log = logging.getLogger("cellar.worker.generator")

DEFAULT_TOP_K = 40
"""OpenAI's API has no top-k; a wide top-k first keeps sampling over Gemma's 262k vocab cheap."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = DEFAULT_TOP_K
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Piece:
    """Text for the client; `finish_reason` is set on the last piece of a job."""

    text: str
    finish_reason: str | None = None


class GenerationError(EngineFailed):
    """llama.cpp failed while decoding this job (502 to the client, with the reason)."""


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    completion_tokens: int = 0
    _out: asyncio.Queue[Piece | BaseException] = field(default_factory=asyncio.Queue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating at the next token (safe from any thread, idempotent)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _emit(self, item: Piece | BaseException) -> None:
        self.loop.call_soon_threadsafe(self._out.put_nowait, item)

    async def pieces(self) -> AsyncIterator[Piece]:
        """The job's text as it is generated, ending with the piece that has a finish_reason."""
        while True:
            item = await self._out.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return


class SerialGenerator:
    """Runs jobs one at a time on a dedicated decode thread."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._running = 0
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, prompt: list[int], params: SamplingParams) -> Job:
        """Queue a job; call from the event loop that will read its pieces."""
        job = Job(prompt=prompt, params=params, loop=asyncio.get_running_loop())
        self._jobs.put(job)
        return job

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled:
                continue
            self._running = 1
            try:
                job._emit(self._generate(job))
            except Exception as exc:
                log.exception("generation failed")
                job._emit(GenerationError(f"llama.cpp failed while generating: {exc}"))
            finally:
                self._running = 0

    def _generate(self, job: Job) -> Piece:
        """Decode until a stop condition; stream pieces; return the final piece."""
        llama, params = self._llama, job.params
        # A fresh evaluation of the whole prompt keeps a seeded request reproducible: llama.cpp's
        # CPU kernels give slightly different logits for different batch splits.
        llama.reset()
        llama.set_seed(params.seed if params.seed is not None else random.getrandbits(32))
        text = TextStream(params.stop)
        tokens = llama.generate(
            job.prompt,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=0.0,
            temp=params.temperature,
            repeat_penalty=1.0,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
        )
        for token in tokens:
            if job.cancelled:
                return Piece("", "cancelled")
            job.completion_tokens += 1
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                return Piece(text.flush(), "stop")
            out = text.push(llama.detokenize([token]))
            if text.stopped:
                return Piece(out, "stop")
            if job.completion_tokens >= params.max_tokens:
                return Piece(out + text.flush(), "length")
            if out:
                job._emit(Piece(out))
        return Piece(text.flush(), "length")
