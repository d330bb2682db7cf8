"""A generation job: what the HTTP side asks for and how its text comes back.

The decode thread produces `Piece`s; the job hands them to the asyncio side through its own
queue, so a slow client never blocks the decode loop. Cancelling is a flag the loop reads every
step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cellar.errors import EngineFailed

T = TypeVar("T")

DEFAULT_TOP_K = 40
"""OpenAI's API has no top-k; a wide top-k first keeps sampling over Gemma's 262k vocab cheap."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = DEFAULT_TOP_K
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    """None: no logprobs. N >= 0: the sampled token's logprob plus the N most likely tokens."""
    grammar: str | None = None
    """GBNF the output must follow (structured output, tool calls)."""
    grammar_trigger: str | None = None
    """None: the grammar applies from the first token; else from where this text appears."""
    ignore_eos: bool = False
    """Keep generating past end-of-text tokens until max_tokens (fixed-length benchmarks)."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits before anything else; -100 bans the token."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    raw: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True)
class Piece:
    """Text for the client; `finish_reason` is set on the last piece of a job."""

    text: str
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


class GenerationError(EngineFailed):
    """llama.cpp failed while decoding this job (502 to the client, with the reason)."""


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    adapter: str | None = None
    """The LoRA adapter this job decodes with (its served name); None: the base model."""
    siblings: int = 0
    """Other jobs of the same request (`n` choices of one prompt): they ride along with each
    other's prompt, however short, so it is computed once."""
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens whose KV was reused from an earlier request instead of computed."""
    _out: asyncio.Queue[Piece | BaseException] = field(default_factory=asyncio.Queue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating at the next step (safe from any thread, idempotent)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def put(self, item: Piece | BaseException) -> None:
        """Hand over a piece (or the error that ended the job); from the job's own event loop
        (the decode thread goes through an `Outbox`)."""
        self._out.put_nowait(item)

    async def pieces(self) -> AsyncIterator[Piece]:
        """The job's text as it is generated, ending with the piece that has a finish_reason."""
        while True:
            item = await self._out.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return


Item = tuple[Job, Piece | BaseException]


class Outbox:
    """Pieces for the asyncio side, handed over together from the decode thread: one wake-up of
    each event loop per step instead of one per sequence.

    `send` waits (briefly) until each loop has had its turn with them. The loop formats and
    writes the pieces in the gap between two decodes then, instead of during the next decode,
    where it would take a core from the decode threads and stall them all at their next
    barrier (on 2 cores: 2-4% more tokens/s at 1-8 streams, measured through HTTP).
    """

    WAIT_S = 0.003
    """At most this long per step: a loop busy with something else does not hold decoding."""

    def __init__(self) -> None:
        self._items: list[Item] = []

    def add(self, job: Job, item: Piece | BaseException) -> None:
        self._items.append((job, item))

    def send(self) -> None:
        if not self._items:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Item]] = {}
        for job, item in self._items:
            by_loop.setdefault(job.loop, []).append((job, item))
        self._items = []
        handed = []
        for loop, items in by_loop.items():
            done = threading.Event()
            loop.call_soon_threadsafe(_put_all, loop, items, done)
            handed.append(done)
        deadline = time.monotonic() + self.WAIT_S
        for done in handed:
            done.wait(max(0.0, deadline - time.monotonic()))


def _put_all(loop: asyncio.AbstractEventLoop, items: list[Item], done: threading.Event) -> None:
    """On the loop: hand the pieces over, and set `done` once the tasks they woke have run."""
    for job, item in items:
        job.put(item)
    loop.call_soon(loop.call_soon, done.set)


def drain(incoming: queue.Queue[T | None], block: bool, take: Callable[[T], None]) -> bool:
    """Hand everything submitted so far to `take` (waiting for the first item when `block`);
    False once the shutdown marker (None) arrives."""
    try:
        item = incoming.get(block=block)
        while True:
            if item is None:
                return False
            take(item)
            item = incoming.get_nowait()
    except queue.Empty:
        return True
