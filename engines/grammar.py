"""Structured output for every engine: `response_format` -> one GBNF grammar.

Both engines enforce the same grammar, so a schema means the same JSON language whichever
engine serves the model: at most one space between tokens and integers of at most 16 digits.
(vLLM's own JSON-schema support allows any whitespace and unbounded numbers, and a small model
can then run on until max_tokens, never closing the object.) The JSON-schema-to-GBNF
conversion is llama-cpp-python's (`llama_cpp.llama_grammar`, pure Python).
"""

from __future__ import annotations

import json

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
