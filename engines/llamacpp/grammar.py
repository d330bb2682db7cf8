"""Structured output: `response_format` -> a GBNF grammar the sampler enforces.

The JSON-schema-to-GBNF conversion is llama-cpp-python's (`llama_cpp.llama_grammar`); the
grammar is then checked by building a llama.cpp grammar sampler once, so a schema it cannot
express is a 400 for the client instead of a failure on the decode thread.
"""

from __future__ import annotations

import json

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from cellar.errors import InvalidRequest
from cellar.protocol import ResponseFormat

# llama-cpp-python's converter lets raw control characters (a bare newline, say) into JSON
# strings, which strict JSON parsers reject; llama.cpp's own converter excludes them.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def grammar_for(response_format: ResponseFormat | None) -> str | None:
    """GBNF for the requested format; None for plain text."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JSON_GBNF
    assert response_format.json_schema is not None
    schema = response_format.json_schema.schema_ or {"type": "object"}
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
        raise InvalidRequest(
            f"cannot enforce this JSON schema: {exc}", param="response_format.json_schema"
        ) from None
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)


def check_grammar(vocab: llama_cpp.llama_vocab_p, grammar: str) -> None:
    """InvalidRequest unless llama.cpp accepts the grammar."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidRequest(
            "llama.cpp rejected the grammar built from response_format", param="response_format"
        )
    llama_cpp.llama_sampler_free(sampler)
