"""Per-sequence sampler chains and token log-probabilities."""

from __future__ import annotations

import ctypes
import math
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import llama_cpp
import numpy as np
import numpy.typing as npt

from cellar.engines.llamacpp.jobs import SamplingParams, TokenLogprob
from cellar.engines.llamacpp.native import (
    BatchedContext,
    Candidates,
    NativeModel,
    SamplerChain,
    grammar_allows,
)

PENALTY_WINDOW = 256
"""Presence, frequency and repetition penalties look at this many recent tokens."""
_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp reads this seed value as "pick one at random"


def _seed(seed: int | None) -> int:
    if seed is None:
        return random.getrandbits(32) & 0xFFFFFFFE
    value = seed & 0xFFFFFFFF
    return value - 1 if value == _RANDOM_SEED else value


def _logit_bias(params: SamplingParams, model: NativeModel) -> ctypes.c_void_p:
    """llama.cpp's logit-bias sampler; a bias of -100 bans its token outright (OpenAI's
    meaning), as llama.cpp's own server does."""
    entries = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
    for entry, (token, bias) in zip(entries, params.logit_bias, strict=True):
        entry.token = token
        entry.bias = -math.inf if bias <= -100 else bias
    sampler: ctypes.c_void_p = llama_cpp.llama_sampler_init_logit_bias(
        model.n_vocab, len(params.logit_bias), entries
    )
    return sampler


def build_chain(params: SamplingParams, model: NativeModel) -> SamplerChain:
    """logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> draw (or greedy).

    Each request gets its own chain, so its penalties history and random stream are its own.
    """
    chain = SamplerChain()
    try:
        if params.logit_bias:
            chain.add(_logit_bias(params, model))
        penalised = (
            params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1
        )
        if penalised:
            chain.add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab,
                    PENALTY_WINDOW,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.temperature <= 0:
            chain.add(llama_cpp.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            chain.add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1:
            chain.add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            chain.add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        chain.add(llama_cpp.llama_sampler_init_temp(params.temperature))
        chain.add(llama_cpp.llama_sampler_init_dist(_seed(params.seed)))
        return chain
    except Exception:
        chain.close()
        raise


def _grammar_sampler(params: SamplingParams, model: NativeModel) -> ctypes.c_void_p:
    assert params.grammar is not None
    grammar = params.grammar.encode()
    if params.grammar_trigger is None:
        sampler: ctypes.c_void_p = llama_cpp.llama_sampler_init_grammar(
            model.vocab, grammar, b"root"
        )
        return sampler
    patterns = (ctypes.c_char_p * 1)(re.escape(params.grammar_trigger).encode())
    sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
        model.vocab, grammar, b"root", patterns, 1, None, 0
    )
    return sampler


_CALL_HEADS = ('\n{"name"', '\n{ "name"')
"""How a call goes on after the trigger, in every grammar engines/toolcalls.py builds."""


class _Trigger:
    """Watches the text of a lazy grammar's sequence for its trigger.

    When a token completes the trigger, llama.cpp feeds the grammar the text from the trigger
    to the end of that token, and a C++ exception (fatal through ctypes) follows if the grammar
    cannot take that text. The grammar goes on `\n{"name"` (maybe a space after the brace), so
    only a token whose text after the trigger begins that is handed to it; any other is kept
    from the grammar (and from the text it watches, which this mirrors): it keeps waiting."""

    def __init__(self, trigger: str, piece: Callable[[int], bytes]) -> None:
        self._trigger = trigger
        self._piece = piece
        self._tail = ""
        self.fired = False

    def admits(self, token: int) -> bool:
        """Whether the grammar may see `token` (False: it would fire on a trigger that is
        followed by something the grammar cannot take)."""
        text = self._tail + self._piece(token).decode("utf-8", "replace")
        at = text.find(self._trigger)
        if at >= 0:
            after = text[at + len(self._trigger) :]
            if not any(head.startswith(after) for head in _CALL_HEADS):
                return False  # the grammar never sees it, as if it had not been written
            self.fired = True
        self._tail = text[-len(self._trigger) :]
        return True


class SequenceSampler:
    """Picks one sequence's next token, under its grammar when it has one.

    Without a grammar the whole chain runs in C (`llama_sampler_sample`). With one, running the
    grammar over all 262k vocabulary entries every step would cost more than the decode, so the
    chain picks a token first and the grammar only checks that one token; only when the grammar
    rejects it are all candidates filtered by the grammar and the chain run again. A lazy
    grammar (`grammar_trigger`) lets every token through until its trigger appears.
    """

    def __init__(
        self, params: SamplingParams, model: NativeModel, piece: Callable[[int], bytes]
    ) -> None:
        self._chain = build_chain(params, model)
        self._grammar: SamplerChain | None = None
        self._candidates: Candidates | None = None
        self._trigger: _Trigger | None = None
        if params.grammar:
            self._grammar = SamplerChain()
            try:
                self._grammar.add(_grammar_sampler(params, model))
            except Exception:
                self.close()
                raise
            self._candidates = Candidates(model.n_vocab)
            if params.grammar_trigger is not None:
                self._trigger = _Trigger(params.grammar_trigger, piece)

    def sample(self, context: BatchedContext, row: int) -> int:
        if self._grammar is None or self._candidates is None:
            return self._chain.sample(context, row)
        if self._trigger is not None and not self._trigger.fired:
            token = self._chain.sample(context, row)
            if self._trigger.admits(token):
                self._grammar.accept(token)
            return token
        logits, candidates = context.logits(row), self._candidates
        candidates.fill(logits)
        candidates.apply(self._chain.ptr)
        token = candidates.selected()
        if not grammar_allows(self._grammar.ptr, token):
            candidates.fill(logits)
            candidates.apply(self._grammar.ptr)
            candidates.apply(self._chain.ptr)
            token = candidates.selected()
        self._grammar.accept(token)
        self._chain.accept(token)
        return token

    def close(self) -> None:
        self._chain.close()
        if self._grammar is not None:
            self._grammar.close()


class StepSampler:
    """Samples every sequence of one decode step, on `helpers` threads besides the caller.

    Between two decodes the ggml threads are idle, and each sequence's chain and logits row are
    its own, so the rows are split between the caller and the helpers (the C calls release the
    GIL). Rows are made final first (`synchronize`): llama.cpp reorders them on first access.
    """

    MIN_ROWS = 4
    """Fewer rows are sampled by the caller alone: handing work over costs more."""

    def __init__(self, helpers: int) -> None:
        self._helpers = helpers
        self._pool = ThreadPoolExecutor(helpers, "sample") if helpers > 0 else None

    def sample(
        self, context: BatchedContext, work: Sequence[tuple[SequenceSampler, int]]
    ) -> list[int]:
        if self._pool is None or len(work) < self.MIN_ROWS:
            return [sampler.sample(context, row) for sampler, row in work]
        context.synchronize()
        parts = min(self._helpers + 1, len(work))
        size = -(-len(work) // parts)
        chunks = [work[i : i + size] for i in range(0, len(work), size)]

        def run(chunk: Sequence[tuple[SequenceSampler, int]]) -> list[int]:
            return [sampler.sample(context, row) for sampler, row in chunk]

        futures = [self._pool.submit(run, chunk) for chunk in chunks[1:]]
        tokens = run(chunks[0])
        for future in futures:
            tokens.extend(future.result())
        return tokens

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def token_logprob(
    logits: npt.NDArray[np.float32], token: int, n_top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """Log-probability of `token` under the model's distribution, and the `n_top` likeliest."""
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))

    def entry(t: int) -> tuple[str, bytes, float]:
        raw = piece(t)
        return raw.decode("utf-8", "replace"), raw, float(logits[t]) - log_total

    top: tuple[tuple[str, bytes, float], ...] = ()
    if n_top > 0:
        best = np.argpartition(logits, -n_top)[-n_top:]
        best = best[np.argsort(-logits[best])]
        top = tuple(entry(int(t)) for t in best)
    text, raw, logprob = entry(token)
    return TokenLogprob(text, raw, logprob, top)
