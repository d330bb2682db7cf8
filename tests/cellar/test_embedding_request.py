"""The embeddings request schema bounds what a client may send before any work starts, and
names the empty input it refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cellar.errors import InvalidRequest
from cellar.protocol import MAX_EMBEDDING_INPUTS, MAX_INPUT_TOKENS, EmbeddingRequest


def test_every_input_form_becomes_a_list_of_inputs() -> None:
    assert EmbeddingRequest(model="m", input="hi").inputs() == ["hi"]
    assert EmbeddingRequest(model="m", input=["a", "b"]).inputs() == ["a", "b"]
    assert EmbeddingRequest(model="m", input=[1, 2]).inputs() == [[1, 2]]
    assert EmbeddingRequest(model="m", input=[[1], [2, 3]]).inputs() == [[1], [2, 3]]


@pytest.mark.parametrize(
    "hostile",
    [
        ["x"] * (MAX_EMBEDDING_INPUTS + 1),  # too many inputs
        [[1]] * (MAX_EMBEDDING_INPUTS + 1),
        [7] * (MAX_INPUT_TOKENS + 1),  # a token list longer than any window
        [[-1, 5]],  # negative token ids
        [{"text": "not an input"}],
    ],
)
def test_oversized_or_malformed_input_is_refused_by_validation(hostile: object) -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input=hostile)


@pytest.mark.parametrize(
    ("empty", "param"),
    [("", "input"), ([], "input"), (["ok", ""], "input[1]"), ([[1], []], "input[1]")],
)
def test_an_empty_input_is_named(empty: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        EmbeddingRequest(model="m", input=empty).inputs()
    assert refused.value.param == param


def test_dimensions_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input="x", dimensions=0)
