"""What `cellar quantize --to` can make, and what each target may cost in quality by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cellar.errors import ToolError

Kind = Literal["gguf", "bnb"]


@dataclass(frozen=True)
class Target:
    name: str
    kind: Kind
    ftype: int | None
    """llama.cpp's `llama_ftype` for GGUF targets."""
    max_ppl_increase: float
    """Default gate of a generation model: the largest perplexity increase over the source (a
    fraction)."""
    engine: Literal["llamacpp", "vllm"]
    min_cosine: float = 0.99
    """Default gate of an embedding model: the lowest mean cosine similarity to the source's
    vectors of the same texts."""
    min_top5_agreement: float = 0.8
    """... and the lowest share of each query's 5 nearest neighbours that stay the same."""


# llama_ftype values (llama.h); cellar/gguf.py names them for reading.
TARGETS = {
    t.name: t
    for t in (
        Target("f16", "gguf", 1, 0.01, "llamacpp", 0.9999, 0.98),
        Target("q8_0", "gguf", 7, 0.02, "llamacpp", 0.999, 0.9),
        Target("q6_k", "gguf", 18, 0.03, "llamacpp", 0.998, 0.9),
        Target("q5_k_m", "gguf", 17, 0.05, "llamacpp", 0.995, 0.85),
        Target("q4_k_m", "gguf", 15, 0.10, "llamacpp", 0.99, 0.8),
        Target("q4_0", "gguf", 2, 0.15, "llamacpp", 0.98, 0.75),
        Target("bnb-int8", "bnb", None, 0.02, "vllm"),
        Target("bnb-nf4", "bnb", None, 0.10, "vllm"),
    )
}

UNQUANTIZED = frozenset({"f32", "f16", "bf16"})
"""GGUF file types whose weights are plain floats: quantizing them loses nothing twice."""

BITS_PER_WEIGHT = {
    "f32": 32.0,
    "f16": 16.0,
    "bf16": 16.0,
    "q8_0": 8.5,
    "q6_k": 6.56,
    "q5_k_m": 5.69,
    "q5_k_s": 5.54,
    "q5_0": 5.5,
    "q4_k_m": 4.85,
    "q4_k_s": 4.58,
    "q4_0": 4.5,
    "q4_1": 5.0,
}
"""Average bits per weight of llama.cpp's types (for the disk-space check before starting)."""


class QuantizeError(ToolError):
    """A quantization that cannot start or did not finish; the message says why."""


def target(name: str) -> Target:
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise QuantizeError(
            f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}"
        ) from None
