"""Prefix sharing across sequences in the llama.cpp scheduler, on the bundled model: a prefix is
computed once for requests that arrive together, taken from whichever slot holds it, counted
exactly, and changes no greedy answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import pytest

from cellar.engines.llamacpp.jobs import Job, SamplingParams
from cellar.engines.llamacpp.native import BatchedContext, ContextShape, NativeModel
from cellar.engines.llamacpp.scheduler import MIN_REUSE, BatchScheduler, common_prefix

SYSTEM = " ".join(f"Rule {i}: answer politely and briefly, citing rule {i}." for i in range(20))
QUESTIONS = ["What is rule 3?", "Name rule 11.", "Is rule 19 kind?", "Say hello."]


@dataclass
class Answer:
    text: str
    cached: int
    prompt: list[int]


@pytest.fixture(scope="module")
def model(bundled_gguf: Path) -> Iterator[NativeModel]:
    native = NativeModel(bundled_gguf, 0)
    yield native
    native.close()


def _tokens(vocab: llama_cpp.Llama, text: str) -> list[int]:
    return list(vocab.tokenize(text.encode(), add_bos=True, special=False))


def _run(
    model: NativeModel,
    vocab: llama_cpp.Llama,
    prompts: list[list[int]],
    slots: int = 4,
    shape: ContextShape | None = None,
) -> tuple[list[Answer], BatchScheduler]:
    """Submit every prompt at once to a fresh scheduler (greedy, 8 tokens each)."""
    context = BatchedContext(model, shape or ContextShape(1024, slots, 128, 2))
    scheduler = BatchScheduler(model, context, lambda t: vocab.detokenize([t]))

    async def one(prompt: list[int]) -> Answer:
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        job = scheduler.submit(prompt, params)
        text = "".join([piece.text async for piece in job.pieces()])
        return Answer(text, job.cached_tokens, prompt)

    async def all_of() -> list[Answer]:
        return list(await asyncio.gather(*(one(p) for p in prompts)))

    try:
        return asyncio.run(all_of()), scheduler
    finally:
        scheduler.close()
        context.close()


def test_requests_arriving_together_compute_their_shared_prefix_once(
    model: NativeModel, vocab: llama_cpp.Llama
) -> None:
    prompts = [_tokens(vocab, f"{SYSTEM}\nQuestion: {q}\nAnswer:") for q in QUESTIONS]
    shared = min(common_prefix(prompts[0], p) for p in prompts[1:])
    assert shared > 200
    answers, scheduler = _run(model, vocab, prompts)
    assert answers[0].cached == 0  # the first computes it
    for answer in answers[1:]:
        assert answer.cached == common_prefix(prompts[0], answer.prompt)  # exact counts
    counters = scheduler.counters
    assert counters.prompt_tokens_cached == sum(a.cached for a in answers)
    assert counters.prompt_tokens_evaluated + counters.prompt_tokens_cached == sum(
        len(p) for p in prompts
    )
    assert counters.prompt_tokens_evaluated < len(prompts[0]) + 4 * 20  # not 4 x the prefix


def test_a_shared_prefix_changes_no_greedy_answer(
    model: NativeModel, vocab: llama_cpp.Llama
) -> None:
    first, second = (_tokens(vocab, f"{SYSTEM}\nQuestion: {q}\nAnswer:") for q in QUESTIONS[:2])
    [alone], _ = _run(model, vocab, [second], slots=1)
    assert alone.cached == 0
    answers, _ = _run(model, vocab, [first, second], slots=2)
    assert answers[1].cached == common_prefix(first, second)  # taken from the other sequence
    assert answers[1].text == alone.text


def test_idle_prefixes_are_evicted_oldest_first_and_answers_stay_the_same(
    model: NativeModel, vocab: llama_cpp.Llama
) -> None:
    """Two slots, three conversations taking turns: each request finds exactly what the slots
    still hold, completes, and a request repeated in place answers the same."""
    topics = ["the sea and its tides", "mountains in winter", "a city market at dawn"]
    prompts = [_tokens(vocab, f"Write a long essay about {t}. It begins:") for t in topics]
    context = BatchedContext(model, ContextShape(256, 2, 64, 2))
    scheduler = BatchScheduler(model, context, lambda t: vocab.detokenize([t]))

    async def ask(prompt: list[int]) -> tuple[str, int]:
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        job = scheduler.submit(prompt, params)
        text = "".join([piece.text async for piece in job.pieces()])
        return text, job.cached_tokens

    try:
        texts = []
        for turn in (0, 1, 2, 0, 1, 2, 2):
            held = [slot.cached[:] for slot in scheduler._slots]  # the decode thread is idle
            expected = max(common_prefix(h, prompts[turn]) for h in held)
            expected = min(expected, len(prompts[turn]) - 1)
            text, cached = asyncio.run(ask(prompts[turn]))
            assert len(vocab.tokenize(text.encode(), add_bos=False)) >= 6, text
            assert cached == expected or (expected < MIN_REUSE and cached <= expected)
            texts.append(text)
        assert texts[-1] == texts[-2]  # the whole prompt cached in its own slot: same answer
        assert scheduler.counters.prompt_tokens_cached >= len(prompts[2]) - 1
    finally:
        scheduler.close()
        context.close()


def test_the_choices_of_one_request_compute_its_prompt_once(
    model: NativeModel, vocab: llama_cpp.Llama
) -> None:
    """n = 4 of a short prompt (under MIN_RIDE): the first computes it, the other three ride
    along and compute only their own last token (each needs its own logits row)."""
    prompt = _tokens(vocab, "The lighthouse keeper wrote in her log that")
    context = BatchedContext(model, ContextShape(1024, 4, 128, 2))
    scheduler = BatchScheduler(model, context, lambda t: vocab.detokenize([t]))

    async def choices() -> list[str]:
        params = [
            SamplingParams(max_tokens=6, temperature=1.0, seed=7 + i, ignore_eos=True)
            for i in range(4)
        ]
        jobs = scheduler.submit_choices(prompt, params)
        return ["".join([piece.text async for piece in job.pieces()]) for job in jobs]

    try:
        texts = asyncio.run(choices())
        counters = scheduler.counters
        assert counters.prompt_tokens_evaluated == len(prompt) + 3
        assert counters.prompt_tokens_cached == 3 * (len(prompt) - 1)
    finally:
        scheduler.close()
        context.close()
    assert len(set(texts)) > 1  # each choice draws from its own seed


def test_jobs_waiting_for_a_slot_start_when_every_slot_frees_in_one_step(
    model: NativeModel, vocab: llama_cpp.Llama
) -> None:
    """Three choices on two slots, the first two finishing in the same step: the third starts
    at once. Before, the decode thread then waited for a new submission (found by fuzzing n=16
    on 8 slots: the request never finished)."""
    context = BatchedContext(model, ContextShape(1024, 2, 128, 2))
    scheduler = BatchScheduler(model, context, lambda t: vocab.detokenize([t]))

    async def three() -> list[int]:
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        jobs = scheduler.submit_choices(_tokens(vocab, "Item one:"), [params] * 3)

        async def done(job: Job) -> int:
            async for _ in job.pieces():
                pass
            return job.completion_tokens

        return list(await asyncio.wait_for(asyncio.gather(*map(done, jobs)), timeout=60))

    try:
        assert asyncio.run(three()) == [4, 4, 4]
    finally:
        scheduler.close()
        context.close()
