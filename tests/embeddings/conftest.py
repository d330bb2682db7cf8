"""The embedding suite's fixtures: the bundled embedding model in the test store the way
`make setup` puts it there (its checkpoint imported, its f16 GGUF made by `cellar quantize`),
and one gateway per engine serving it beside the chat model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellar.cpus import format_cpu_list
from cellar.store import ModelStore
from tests.gateway import ENGINES, Gateway, default_models, run_cellar, start_gateway

CHECKPOINT = "all-minilm-l6-v2"
GGUF = "all-minilm-l6-v2-f16"
EMBEDDER = "minilm"
WINDOW = 256
"""sentence-transformers' window for this model; vLLM reads it from sentence_bert_config.json,
the llama.cpp deployment sets it as n_ctx."""


@pytest.fixture(scope="session")
def embedding_store(store: ModelStore, minilm_checkpoint: Path) -> ModelStore:
    """The test store with the embedding checkpoint and the f16 GGUF quantize makes of it."""
    root = str(store.root)
    done = run_cellar(
        "models", "import", str(minilm_checkpoint), "--name", CHECKPOINT, "--store", root
    )
    assert done.returncode == 0, done.stderr
    done = run_cellar("quantize", CHECKPOINT, "--to", "f16", "--store", root)
    assert done.returncode == 0, done.stderr + done.stdout
    return store


CANARY = [
    {
        "name": "same meaning",
        "texts": ["Where is the nearest pharmacy?", "How do I find a drugstore close by?"],
        "min_cosine": 0.5,
    },
    {
        "name": "unrelated",
        "texts": ["Where is the nearest pharmacy?", "The boiler is inspected every spring."],
        "max_cosine": 0.3,
    },
    {  # fails on purpose: these two mean nearly the same
        "name": "too strict",
        "texts": ["I lost my bank card.", "My bank card is lost."],
        "max_cosine": 0.2,
    },
]


def embedding_model(engine: str) -> dict[str, Any]:
    common = {"name": EMBEDDER, "task": "embed", "preload": True, "canary": CANARY}
    if engine == "llamacpp":
        return {
            **common,
            "source": f"store:{GGUF}",
            "engine": "llamacpp",
            "llamacpp": {"n_ctx": WINDOW, "n_parallel": 64, "n_batch": 512},
        }
    from tests.gateway import VLLM_PYTHON

    return {
        **common,
        "source": f"store:{CHECKPOINT}",
        "engine": "vllm",
        "vllm": {"python": str(VLLM_PYTHON), "dtype": "float32", "cpu_kv_cache_space": "1GiB"},
    }


def split_cores() -> tuple[str, str]:
    """The gateway's cores in two halves (one core each on the 2-core test machine)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("pinning two workers apart needs two cores")
    half = len(cores) // 2
    return format_cpu_list(set(cores[half:])), format_cpu_list(set(cores[:half]))


@pytest.fixture(scope="session", params=ENGINES)
def embedding_gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embedding_store: ModelStore,
) -> Iterator[Gateway]:
    """The embedding model on one engine, beside the chat model (on llama.cpp). vLLM's CPU
    worker binds its OpenMP threads to cores, where llama.cpp's decode threads would wait on
    them: each gets cores of its own (`cpus`), as the README tells operators to do."""
    work = tmp_path_factory.mktemp(f"embeddings-{request.param}")
    chat, embedder = default_models()[0], embedding_model(request.param)
    if request.param == "vllm":
        chat["cpus"], embedder["cpus"] = split_cores()
    models = [chat, embedder]
    with start_gateway(work, embedding_store.root, models) as gateway:
        yield gateway
