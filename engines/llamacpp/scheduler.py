"""Continuous batching: many requests decoded together in one llama.cpp context.

One decode thread owns the context. Each step it builds one batch holding
  1. the next token of every sequence that is generating, then
  2. chunks of the prompts of newly admitted requests (chunked prefill, up to `n_batch`
     tokens in all), so a long new prompt never freezes the running streams,
decodes it, and samples every sequence whose logits came out of that step with its own sampler
chain (split over a few threads while the decode threads are idle). Requests beyond the
`n_parallel` slots wait in FIFO order.

A slot keeps the KV of its last request after it finishes. A new request starts from the
longest prefix of its prompt held by any slot, idle or running: in its own slot it is kept, from
another it is shared (llama.cpp's unified cache gives the new sequence the same KV cells, at no
cost), and only the rest is computed. A request whose prefix another request is still
computing rides along with it: each further token of the shared part is decoded once, as one KV
cell that both sequences hold (a batch token may belong to several sequences), so requests
arriving together with one system prompt compute it once, and each goes on to its own question
in the step that finishes the shared part. Free slots are taken least recently used first, so the
idle prefix evicted is the oldest. Prefill goes shortest-remaining first within each step's
budget, so a request whose prefix is cached gets its first token without queueing behind long
prompts. The last prompt token is always decoded in a step of its own, so a repeated request
sees the same logits whether its prefix was cached or not.

LoRA adapters apply to the whole context, so one step decodes the sequences of one adapter (or
of the base model) only. When requests for several are running, the steps take turns between
them, round robin. A slot's cached KV counts for prefix reuse only under the adapter that
computed it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cellar.engines.llamacpp.jobs import (
    GenerationError,
    Job,
    Outbox,
    Piece,
    SamplingParams,
    TokenLogprob,
    drain,
)
from cellar.engines.llamacpp.native import BatchedContext, NativeAdapter, NativeError, NativeModel
from cellar.engines.llamacpp.sampling import SequenceSampler, StepSampler, token_logprob
from cellar.engines.llamacpp.textstream import TextStream

log = logging.getLogger("cellar.worker.scheduler")


MIN_RIDE = 32
"""Shared prompt tokens, beyond what is cached already, worth riding along with a request that
is computing them."""
MIN_REUSE = 8
"""Cached prompt tokens worth choosing a slot for over the least recently used one."""
MAX_SAMPLING_THREADS = 4
"""Threads (of the decode threads, idle between decodes) that sample one step's sequences."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    """One sequence id in the context, and the tokens whose KV it holds (positions 0..n-1)."""

    seq: int
    cached: list[int] = field(default_factory=list)
    adapter: str | None = None
    """The adapter the cached KV was computed with."""
    busy: bool = False
    last_used: float = 0.0


@dataclass
class Active:
    """A request being served in a slot."""

    job: Job
    slot: Slot
    pending: list[int]
    """Prompt tokens not yet decoded."""
    sampler: SequenceSampler
    text: TextStream
    next_token: int | None = None
    """Sampled, to be decoded in the next step."""
    row: int = -1
    """Batch row whose logits this sequence samples from after the current step; -1: none."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    ride: tuple[Active, int] | None = None
    """Riding along with that request's prefill up to this many shared prompt tokens."""
    riders: list[Active] = field(default_factory=list)
    """Requests riding along with this one's prefill."""

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        taken, self.logprobs = tuple(self.logprobs), []
        return taken


@dataclass
class Counters:
    prompt_tokens_evaluated: int = 0
    prompt_tokens_cached: int = 0
    decode_steps: int = 0
    adapter_switches: int = 0


class BatchScheduler:
    """Owns the decode thread; `submit` and the properties are safe from the event loop."""

    def __init__(
        self,
        model: NativeModel,
        context: BatchedContext,
        piece: Callable[[int], bytes],
        adapters: dict[str, NativeAdapter] | None = None,
    ) -> None:
        self._model = model
        self._ctx = context
        self._piece = piece
        self._adapters = adapters or {}
        self._turn: str | None = None
        """The adapter whose sequences the last step decoded."""
        self._incoming: queue.Queue[list[Job] | None] = queue.Queue()
        self._waiting: deque[Job] = deque()
        self._slots = [Slot(seq) for seq in range(context.shape.n_parallel)]
        self._active: list[Active] = []
        self.counters = Counters()
        self._outbox = Outbox()
        """Pieces of this step, sent at its end."""
        self._sampling = StepSampler(helpers=min(context.shape.n_threads, MAX_SAMPLING_THREADS) - 1)
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + self._incoming.qsize()

    def submit(self, prompt: list[int], params: SamplingParams, adapter: str | None = None) -> Job:
        """Queue a job (with one of the loaded adapters, or none); call from the event loop
        that will read its pieces."""
        return self.submit_choices(prompt, [params], adapter)[0]

    def submit_choices(
        self, prompt: list[int], choices: list[SamplingParams], adapter: str | None = None
    ) -> list[Job]:
        """Queue one job per choice of the same prompt, together: admitted at once, they
        compute the prompt once (one rides along with the other)."""
        loop = asyncio.get_running_loop()
        siblings = len(choices) - 1
        jobs = [Job(prompt, params, loop, adapter, siblings) for params in choices]
        self._incoming.put(jobs)
        return jobs

    def close(self) -> None:
        self._incoming.put(None)
        self._thread.join(timeout=30)
        self._sampling.close()

    # -- the decode thread ------------------------------------------------------------------

    def _run(self) -> None:
        # Wait for work only when there is none: jobs left waiting for a slot are admitted as
        # soon as the step that freed the slots ends (all of them may free in the same step).
        while self._pull(block=not self._active and not self._waiting):
            try:
                self._drop_cancelled()
                self._admit()
                if self._active:
                    self._step()
            except Exception as exc:  # the decode thread must outlive any one failure
                log.exception("decode step failed")
                self._fail_all(str(exc))
            if not self._active:  # no decode to send them with
                self._outbox.send()
        for active in list(self._active):
            self._release(active)
        self._outbox.send()

    def _pull(self, block: bool) -> bool:
        """Move newly submitted jobs to the waiting line; False once asked to shut down."""
        return drain(self._incoming, block, self._waiting.extend)

    def _drop_cancelled(self) -> None:
        if any(job.cancelled for job in self._waiting):
            self._waiting = deque(job for job in self._waiting if not job.cancelled)
        for active in [a for a in self._active if a.job.cancelled]:
            self._release(active)

    def _pick_slot(self, job: Job) -> Slot | None:
        """The free slot holding the longest prefix of the job's prompt; when none holds one
        worth keeping (MIN_REUSE tokens, or all but the last of a shorter prompt), the least
        recently used, so idle prefixes are evicted oldest first (a slot never used is the
        oldest). A request repeated alone lands in the slot that computed it, so it sees the
        same KV cells and gives the same answer."""
        free = [slot for slot in self._slots if not slot.busy]
        if not free:
            return None

        enough = min(MIN_REUSE, len(job.prompt) - 1)  # a short prompt repeated: its own slot

        def worth(slot: Slot) -> tuple[int, float]:
            reuse = self._reusable(slot, job)
            return (reuse if reuse >= enough else 0, -slot.last_used)

        return max(free, key=worth)

    @staticmethod
    def _reusable(slot: Slot, job: Job) -> int:
        return common_prefix(slot.cached, job.prompt) if slot.adapter == job.adapter else 0

    def _admit(self) -> None:
        while self._waiting:
            slot = self._pick_slot(self._waiting[0])
            if slot is None:
                return
            job = self._waiting.popleft()
            try:
                sampler = SequenceSampler(job.params, self._model, self._piece)
            except Exception as exc:
                self._outbox.add(job, GenerationError(f"could not set up sampling: {exc}"))
                continue
            slot.busy = True
            active = Active(job, slot, [], sampler, TextStream(job.params.stop))
            self._active.append(active)
            self._start(active)

    def _best_cached(self, job: Job) -> tuple[Slot | None, int]:
        """The slot holding the longest prefix of the job's prompt (under its adapter)."""
        best, length = None, 0
        for slot in self._slots:
            found = self._reusable(slot, job)
            if found > length:
                best, length = slot, found
        return best, length

    def _leader(self, active: Active) -> tuple[Active, int] | None:
        """A request still computing a longer prefix of this one's prompt, from exactly where
        this one's KV ends, and how far they share it, when that is worth riding along for."""
        job, at = active.job, len(active.slot.cached)
        best: tuple[Active, int] | None = None
        for other in self._active:
            if (
                other is active
                or other.ride is not None
                or other.job.adapter != job.adapter
                or len(other.slot.cached) != at
                or len(other.pending) < 2
            ):
                continue
            upto = min(
                common_prefix(other.job.prompt, job.prompt),
                len(job.prompt) - 1,
                len(other.job.prompt) - 1,
            )
            # choices of one request (the same prompt object) share even a short prompt
            least = 1 if job.siblings and other.job.prompt is job.prompt else MIN_RIDE
            if upto >= at + least and (best is None or upto > best[1]):
                best = (other, upto)
        return best

    def _start(self, active: Active) -> None:
        """Set the request's slot to the longest cached prefix of its prompt (kept, or shared
        from another slot) and leave the rest of the prompt to compute."""
        job, slot = active.job, active.slot
        limit = len(job.prompt) - 1
        own = min(self._reusable(slot, job), limit)
        source, shared = self._best_cached(job)
        shared = min(shared, limit)
        ctx = self._ctx
        if source is not None and source is not slot and shared > own:
            ctx.forget(slot.seq)
            ctx.share(source.seq, slot.seq, shared)
            slot.cached[:] = source.cached[:shared]
            reuse = shared
        else:
            reuse = own
            try:
                ctx.forget(slot.seq, reuse)
            except NativeError:  # this cache cannot cut a sequence there: compute it all
                reuse = 0
                ctx.forget(slot.seq)
            del slot.cached[reuse:]
        slot.adapter = job.adapter
        job.cached_tokens = reuse
        self.counters.prompt_tokens_cached += reuse
        active.pending = job.prompt[reuse:]
        active.ride = self._leader(active)
        if active.ride is not None:
            active.ride[0].riders.append(active)

    def _next_turn(self) -> str | None:
        """The adapter this step decodes for: round robin over those with running requests."""
        groups = list(dict.fromkeys(active.job.adapter for active in self._active))
        if len(groups) == 1 or self._turn not in groups:
            return groups[0]
        return groups[(groups.index(self._turn) + 1) % len(groups)]

    def _step(self) -> None:
        ctx = self._ctx
        ctx.clear_batch()
        turn = self._next_turn()
        if ctx.use_adapter(self._adapters[turn] if turn is not None else None):
            self.counters.adapter_switches += 1
        self._turn = turn
        mine = [active for active in self._active if active.job.adapter == turn]
        for active in self._active:
            active.row = -1
        for active in mine:
            if active.next_token is not None:
                active.row = self._feed(active, active.next_token, logits=True)
                active.next_token = None
        order = sorted(
            (a for a in mine if a.pending and a.ride is None), key=lambda a: len(a.pending)
        )
        for active in order:  # riders set free on the way join the end of the line
            if ctx.batch_room:
                order.extend(self._prefill(active))
        if not ctx.n_tokens:
            return
        ctx.decode()
        self.counters.decode_steps += 1
        sampled = [active for active in self._active if active.row >= 0]
        tokens = self._sampling.sample(ctx, [(active.sampler, active.row) for active in sampled])
        for active, token in zip(sampled, tokens, strict=True):
            self._advance(active, token)
        self._outbox.send()

    def _feed(self, active: Active, token: int, logits: bool) -> int:
        slot = active.slot
        row = self._ctx.add(token, len(slot.cached), slot.seq, logits)
        slot.cached.append(token)
        return row

    def _prefill(self, active: Active) -> list[Active]:
        """Feed the next chunk of the request's prompt (its last token alone, in a step after
        the rest); returns the riders that reached the end of what they share with it and
        have more than their last token of their own to compute."""
        pending = active.pending
        if len(pending) == 1:
            active.row = self._feed(active, pending.pop(), logits=True)
            self.counters.prompt_tokens_evaluated += 1
            return []
        count = min(self._ctx.batch_room, len(pending) - 1)
        slot, start = active.slot, len(active.slot.cached)
        carried = [(rider, upto, min(count, upto - start)) for rider, upto in self._riding(active)]
        for k, token in enumerate(pending[:count]):
            also = [rider.slot.seq for rider, _, n in carried if k < n]
            self._ctx.add(token, start + k, slot.seq, False, also)
        slot.cached.extend(pending[:count])
        del pending[:count]
        self.counters.prompt_tokens_evaluated += count
        free = []
        for rider, upto, n in carried:
            rider.slot.cached.extend(rider.pending[:n])
            del rider.pending[:n]
            rider.job.cached_tokens += n
            self.counters.prompt_tokens_cached += n
            if len(rider.slot.cached) >= upto:
                self._dismount(rider)
                if len(rider.pending) > 1:
                    free.append(rider)
        return free

    @staticmethod
    def _riding(active: Active) -> list[tuple[Active, int]]:
        """The requests riding along with this one, and how far each shares its prompt."""
        return [(rider, rider.ride[1]) for rider in active.riders if rider.ride is not None]

    @staticmethod
    def _dismount(rider: Active) -> None:
        """The rider goes on alone from the KV it holds now."""
        if rider.ride is not None:
            rider.ride[0].riders.remove(rider)
            rider.ride = None

    def _advance(self, active: Active, token: int) -> None:
        job, params = active.job, active.job.params
        job.completion_tokens += 1
        if self._model.is_eog(token) and not params.ignore_eos:
            self._finish(active, active.text.flush(), "stop")
            return
        if params.logprobs is not None:
            logits = self._ctx.logits(active.row)
            active.logprobs.append(token_logprob(logits, token, params.logprobs, self._piece))
        text = active.text.push(self._piece(token))
        if active.text.stopped:
            self._finish(active, text, "stop")
        elif job.completion_tokens >= params.max_tokens:
            self._finish(active, text + active.text.flush(), "length")
        else:
            active.next_token = token
            if text:
                self._outbox.add(job, Piece(text, None, active.take_logprobs()))

    def _finish(self, active: Active, text: str, reason: str) -> None:
        self._outbox.add(active.job, Piece(text, reason, active.take_logprobs()))
        self._release(active)

    def _release(self, active: Active) -> None:
        """Free the slot; its KV stays for prefix reuse by a later request."""
        active.sampler.close()
        self._dismount(active)
        for rider in list(active.riders):
            self._dismount(rider)
        active.slot.busy = False
        active.slot.last_used = time.monotonic()
        self._active.remove(active)

    def _fail_all(self, reason: str) -> None:
        for active in list(self._active):
            error = GenerationError(f"llama.cpp failed while generating: {reason}")
            self._outbox.add(active.job, error)
            active.slot.cached.clear()
            self._release(active)
            try:
                self._ctx.forget(active.slot.seq)
            except NativeError:
                log.exception("could not clear sequence %d", active.slot.seq)
