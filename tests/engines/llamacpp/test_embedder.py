"""The llama.cpp embedder on the bundled MiniLM (all-MiniLM-L6-v2), converted to GGUF by
llama.cpp's converter: its vectors match sentence-transformers' recipe computed here with
transformers (mean pooling over the attention mask, then L2 normalisation), and an input gives
the same vector alone or packed in a batch with 63 others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from cellar.engines.llamacpp.embedder import Embedder
from cellar.engines.llamacpp.native import EmbeddingContext, NativeModel
from cellar.errors import EngineFailed
from tests.minilm import Reference

TEXTS = [
    "The cat sits on the mat.",
    "Quarterly revenue grew by ten percent, driven by exports to Asia.",
    "Con mèo ngồi trên tấm thảm.",
    "Doanh thu quý này tăng mười phần trăm nhờ xuất khẩu sang châu Á.",
    "How do I reset my password?",
    " ".join(["The committee reviewed every clause of the contract before signing it."] * 18),
]


@pytest.fixture(scope="module")
def embedder(minilm_gguf: Path) -> Iterator[tuple[Embedder, llama_cpp.Llama]]:
    model = NativeModel(minilm_gguf, 0)
    context = EmbeddingContext(model, n_tokens=2048, n_seqs=64, n_threads=2)
    assert context.pooled
    embedder = Embedder(context)
    vocab = llama_cpp.Llama(str(minilm_gguf), vocab_only=True, verbose=False)
    yield embedder, vocab
    embedder.close()
    context.close()
    model.close()


def _tokens(vocab: llama_cpp.Llama, text: str) -> list[int]:
    return list(vocab.tokenize(text.encode(), add_bos=True, special=False))


def _embed(embedder: Embedder, inputs: list[list[int]]) -> list[np.ndarray]:
    return asyncio.run(embedder.embed(inputs, normalize=True))


def test_vectors_match_the_sentence_transformers_recipe(
    embedder: tuple[Embedder, llama_cpp.Llama], minilm_reference: Reference
) -> None:
    engine, vocab = embedder
    vectors = _embed(engine, [_tokens(vocab, text) for text in TEXTS])
    for text, vector in zip(TEXTS, vectors, strict=True):
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        assert float(vector @ minilm_reference(text)) >= 0.999, text


def test_an_input_gives_the_same_vector_alone_or_in_a_full_batch(
    embedder: tuple[Embedder, llama_cpp.Llama],
) -> None:
    engine, vocab = embedder
    query = _tokens(vocab, TEXTS[3])
    [alone] = _embed(engine, [query])
    others = [_tokens(vocab, f"Passage {i}: {TEXTS[i % len(TEXTS)]}") for i in range(63)]
    batched = _embed(engine, [*others[:30], query, *others[30:]])
    assert len(batched) == 64
    assert float(alone @ batched[30]) >= 0.9999
    assert engine.counters.batches >= 2


def test_concurrent_requests_share_encodes_and_each_gets_its_own_vectors(
    embedder: tuple[Embedder, llama_cpp.Llama],
) -> None:
    engine, vocab = embedder
    inputs = [[_tokens(vocab, text)] for text in TEXTS]

    async def all_at_once() -> list[list[np.ndarray]]:
        return list(await asyncio.gather(*(engine.embed(i, normalize=True) for i in inputs)))

    before = engine.counters.batches
    answers = asyncio.run(all_at_once())
    solo = _embed(engine, [tokens for [tokens] in inputs])
    for [vector], expected in zip(answers, solo, strict=True):
        assert float(vector @ expected) >= 0.9999
    assert engine.counters.batches - before < len(TEXTS) + 1  # not one encode per request


def test_an_input_longer_than_the_batch_fails_its_request_only(
    embedder: tuple[Embedder, llama_cpp.Llama],
) -> None:
    engine, vocab = embedder
    too_long = [101, *([2000] * 3000), 102]  # the service never sends one; the thread copes
    with pytest.raises(EngineFailed, match="exceeds the batch"):
        _embed(engine, [_tokens(vocab, "fine"), too_long])
    assert len(_embed(engine, [_tokens(vocab, "still serving")])) == 1
