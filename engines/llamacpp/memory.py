"""How much RAM a llama.cpp worker will need, estimated before it starts."""

from __future__ import annotations

from pathlib import Path

from cellar.config import LlamaCppSettings
from cellar.gguf import GGUFError, read_metadata

PROCESS_OVERHEAD = 200 * 2**20
"""Python, FastAPI, llama.cpp's code and tokenizer tables."""
_F16 = 2


def estimate_bytes(path: Path, settings: LlamaCppSettings) -> int:
    """Weights (the file, memory-mapped) + KV cache for n_ctx x n_parallel tokens + the compute
    buffer (dominated by logits: n_batch x vocabulary floats) + process overhead."""
    weights = path.stat().st_size
    try:
        meta, arrays = read_metadata(path)
    except (GGUFError, OSError):  # unreadable header: the worker will say why when it loads
        return weights + PROCESS_OVERHEAD
    arch = str(meta.get("general.architecture", ""))

    def number(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, int | float) else default

    heads = number("attention.head_count", 1)
    width = number("embedding_length", 4096)
    kv_heads = number("attention.head_count_kv", heads)
    key_len = number("attention.key_length", width // max(heads, 1))
    value_len = number("attention.value_length", key_len)
    per_token = number("block_count", 32) * kv_heads * (key_len + value_len) * _F16
    tokens = settings.n_ctx * settings.n_parallel
    vocab = arrays.get("tokenizer.ggml.tokens", 32000)
    compute = settings.n_batch * vocab * 4
    return weights + tokens * per_token + compute + PROCESS_OVERHEAD
