"""Structured output in the llama.cpp worker: the shared grammar (engines/grammar.py), checked
by building a llama.cpp grammar sampler once, so a schema it cannot express is a 400 for the
client instead of a failure on the decode thread."""

from __future__ import annotations

import llama_cpp

from cellar.errors import InvalidRequest


def check_grammar(
    vocab: llama_cpp.llama_vocab_p, grammar: str, param: str = "response_format"
) -> None:
    """InvalidRequest unless llama.cpp accepts the grammar (built from `param`)."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidRequest(f"llama.cpp rejected the grammar built from {param}", param=param)
    llama_cpp.llama_sampler_free(sampler)
