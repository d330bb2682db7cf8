"""Structured output for every engine: `response_format` -> one GBNF grammar.

Both engines enforce the same grammar, so a schema means the same JSON language whichever
engine serves the model: at most one space between tokens and integers of at most 16 digits.
(vLLM's own JSON-schema support allows any whitespace and unbounded numbers, and a small model
can then run on until max_tokens, never closing the object.) The JSON-schema-to-GBNF
conversion is llama-cpp-python's (`llama_cpp.llama_grammar`, pure Python).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from cellar.errors import InvalidRequest
from cellar.protocol import ResponseFormat

# llama-cpp-python's converter lets raw control characters (a bare newline, say) into JSON
# strings, which strict JSON parsers reject; llama.cpp's own converter excludes them.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


# The converter writes every repeat out literally (`minItems: 1000` is a thousand copies of the
# item rule), so a 70-byte schema could ask for gigabytes: bound the schema before building,
# and the grammar after.
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_REPEAT = 256
"""Largest minItems/maxItems/minLength/maxLength/minProperties/maxProperties and `{n}` in a
`pattern`."""
MAX_REPEATS_TOTAL = 4096
"""Sum of every repeat the schema asks for."""
MAX_GRAMMAR_BYTES = 1024 * 1024
BUILD_TIMEOUT_S = 5.0
_REPEAT_KEYS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_PATTERN_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
PARAM = "response_format"


@dataclass(frozen=True)
class Grammar:
    """GBNF an answer follows: from its first token, or (lazily) from where `trigger` first
    appears in it."""

    text: str
    trigger: str | None = None


def _too_big(why: str, param: str = PARAM) -> InvalidRequest:
    return InvalidRequest(f"cannot enforce this JSON schema: {why}", param=param)


def _repeats(node: Any, depth: int = 0, param: str = PARAM) -> int:
    """The sum of the repeats `node` asks for; InvalidRequest when one is out of bounds."""
    if depth > MAX_SCHEMA_DEPTH:
        raise _too_big(f"it nests deeper than {MAX_SCHEMA_DEPTH} levels", param)
    total = 0
    if isinstance(node, dict):
        for key, value in node.items():
            counts: list[int] = []
            if key in _REPEAT_KEYS and isinstance(value, int | float):
                if not math.isfinite(value):
                    raise _too_big(f"{key} is {value}", param)
                counts = [int(value)]
            elif key == "pattern" and isinstance(value, str):
                counts = [int(n) for pair in _PATTERN_REPEAT.findall(value) for n in pair if n]
            else:
                total += _repeats(value, depth + 1, param)
            for count in counts:
                if count > MAX_REPEAT:
                    raise _too_big(f"{key} {count} is more than {MAX_REPEAT} repeats", param)
                total += count
    elif isinstance(node, list):
        total += sum(_repeats(item, depth + 1, param) for item in node)
    return total


def check_format(response_format: ResponseFormat | None) -> None:
    """check_schema for a request's `response_format` (nothing to check unless a schema)."""
    if needs_building(response_format):
        assert response_format is not None and response_format.json_schema is not None
        check_schema(response_format.json_schema.schema_)


def check_schema(schema: dict[str, Any], param: str = PARAM) -> None:
    """Refuse, before anything is built, a schema whose grammar could grow without bound."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise _too_big(f"it is larger than {MAX_SCHEMA_BYTES} bytes", param)
    if _repeats(schema, 0, param) > MAX_REPEATS_TOTAL:
        raise _too_big(f"it asks for more than {MAX_REPEATS_TOTAL} repeats in all", param)


def grammar_for(response_format: ResponseFormat | None) -> str | None:
    """GBNF for the requested format; None for plain text. Bounded (see check_schema) but not
    instant: off an event loop, call it through `grammar_off_loop`."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JSON_GBNF
    assert response_format.json_schema is not None
    schema = response_format.json_schema.schema_ or {"type": "object"}
    check_schema(schema)
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
        raise InvalidRequest(
            f"cannot enforce this JSON schema: {exc}", param="response_format.json_schema"
        ) from None
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise _too_big(f"its grammar would be larger than {MAX_GRAMMAR_BYTES} bytes")
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)


def needs_building(response_format: ResponseFormat | None) -> bool:
    return response_format is not None and response_format.type == "json_schema"


async def grammar_off_loop(response_format: ResponseFormat | None) -> str | None:
    """grammar_for in a thread, within BUILD_TIMEOUT_S, so an event loop never builds one."""
    if not needs_building(response_format):
        return grammar_for(response_format)
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(grammar_for, response_format), BUILD_TIMEOUT_S
        )
    except TimeoutError:
        raise _too_big(f"building its grammar took longer than {BUILD_TIMEOUT_S:g} s") from None
