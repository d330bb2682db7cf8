"""Grammars built from response_format, checked against llama.cpp's grammar engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from cellar.engines.grammar import grammar_for
from cellar.engines.llamacpp.grammar import check_grammar
from cellar.engines.llamacpp.native import grammar_allows
from cellar.errors import InvalidRequest
from cellar.protocol import ResponseFormat


def _format(schema: dict[str, Any]) -> ResponseFormat:
    return ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    )


def test_text_format_has_no_grammar() -> None:
    assert grammar_for(None) is None
    assert grammar_for(ResponseFormat(type="text")) is None


def test_schema_strings_exclude_control_characters() -> None:
    grammar = grammar_for(_format({"type": "object", "properties": {"a": {"type": "string"}}}))
    assert grammar is not None
    [char_rule] = [line for line in grammar.splitlines() if line.startswith("char ::=")]
    assert "\\x00-\\x1F" in char_rule


def test_unresolvable_schema_is_a_client_error() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}
    with pytest.raises(InvalidRequest):
        grammar_for(_format(schema))


def test_grammar_rejects_a_raw_newline_in_a_string(bundled_gguf: Path) -> None:
    vocab_model = llama_cpp.Llama(str(bundled_gguf), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(vocab_model.model)
    grammar = grammar_for(
        _format({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    )
    assert grammar is not None
    check_grammar(vocab, grammar)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    try:
        for token in vocab_model.tokenize(b'{"a": "x', add_bos=False):
            assert grammar_allows(sampler, token)
            llama_cpp.llama_sampler_accept(sampler, token)
        newline = vocab_model.tokenize(b"\n", add_bos=False)[0]
        assert not grammar_allows(sampler, newline)
    finally:
        llama_cpp.llama_sampler_free(sampler)
