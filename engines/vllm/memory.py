"""How much host RAM a vLLM worker will need, estimated before it starts.

On a GPU the weights and KV cache live in GPU memory (vLLM takes `gpu_memory_utilization` of
each GPU); the host holds the Python processes. On the CPU build everything is in RAM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cellar.config import VllmSettings
from cellar.hashing import tree_size

PROCESS_OVERHEAD = 3 * 2**30
"""The API server, the engine core and the worker, each a Python process with torch loaded
(measured: about 3 GiB of RSS beside the weights and the KV cache for the bundled model)."""
GPU_HOST_OVERHEAD = 4 * 2**30
"""The same processes with CUDA loaded, when the weights live on the GPU."""
CPU_KV_DEFAULT = 4 * 2**30
"""vLLM-CPU's KV cache when VLLM_CPU_KVCACHE_SPACE is not set."""
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def _config(checkpoint: Path, name: str = "config.json") -> dict[str, Any]:
    try:
        config = json.loads((checkpoint / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def checkpoint_context(checkpoint: Path) -> int | None:
    """The context the checkpoint was trained for (vLLM's default max_model_len): its
    position embeddings, or a sentence-transformers model's shorter `max_seq_length`."""
    config = _config(checkpoint)
    text = config.get("text_config")
    trained = None
    for source in (config, text if isinstance(text, dict) else {}):
        value = source.get("max_position_embeddings")
        if isinstance(value, int):
            trained = value
            break
    sentence = _config(checkpoint, "sentence_bert_config.json").get("max_seq_length")
    if isinstance(sentence, int) and sentence > 0:
        return min(sentence, trained) if trained else sentence
    return trained


def _weights_bytes(checkpoint: Path, dtype: str) -> int:
    """The weights as loaded: the safetensors size, rescaled when vLLM casts them."""
    size = sum(tree_size(p) for p in checkpoint.glob("*.safetensors")) or tree_size(checkpoint)
    config = _config(checkpoint)
    stored = str(config.get("dtype") or config.get("torch_dtype") or "")
    if dtype == "auto" or stored not in _DTYPE_BYTES:
        return size
    return size * _DTYPE_BYTES[dtype] // _DTYPE_BYTES[stored]


def estimate_bytes(checkpoint: Path, settings: VllmSettings, on_cpu: bool) -> int:
    if not on_cpu:
        return GPU_HOST_OVERHEAD
    kv = settings.cpu_kv_cache_space or CPU_KV_DEFAULT
    return _weights_bytes(checkpoint, settings.dtype) + kv + PROCESS_OVERHEAD
