"""What the launcher tells a llama.cpp worker: everything it needs, as one JSON argument."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict


class WorkerAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """What requests ask for: `MODEL:ADAPTER` (the gateway maps aliases to it)."""
    path: Path
    """A GGUF LoRA adapter."""
    scale: float = 1.0


class WorkerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """The served model name (the deployment's `name`)."""
    model_path: Path
    n_ctx: int
    """Context of each sequence."""
    n_parallel: int
    n_threads: int | None
    """None: every core this process may run on."""
    n_batch: int
    n_gpu_layers: int
    chat_template: str | None
    """Template text from the config; overrides the GGUF's own template."""
    log_level: str = "info"
    adapters: tuple[WorkerAdapter, ...] = ()
    task: Literal["generate", "embed"] = "generate"
    """`embed`: an embedding model; `n_parallel` inputs of at most `n_ctx` tokens, `n_batch`
    tokens in all, go into each encode."""
    normalize: bool = True
    """Embeddings: L2-normalise each vector (as sentence-transformers' Normalize does)."""

    def threads(self) -> int:
        return self.n_threads or len(os.sched_getaffinity(0))
