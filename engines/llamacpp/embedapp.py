"""A llama.cpp worker serving an embedding model: loading it, `/v1/embeddings` in OpenAI's
shape, and clear refusals of what such a model cannot do."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from fastapi import FastAPI, Request

from cellar.engines.llamacpp.app import worker_app
from cellar.engines.llamacpp.embedder import Embedder, Vector
from cellar.engines.llamacpp.model import ModelLoadError, open_vocab
from cellar.engines.llamacpp.native import EmbeddingContext, NativeError, NativeModel
from cellar.engines.llamacpp.spec import WorkerSpec
from cellar.errors import InvalidRequest, ModelNotFound
from cellar.protocol import EmbeddingRequest
from cellar.web import unless_disconnected


@dataclass
class LoadedEmbedding:
    vocab: llama_cpp.Llama
    native: NativeModel
    context: EmbeddingContext
    window: int
    """Tokens of one input: the smaller of the configured `n_ctx` and the model's own."""

    def close(self) -> None:
        self.context.close()
        self.native.close()


def load_embedding(spec: WorkerSpec) -> LoadedEmbedding:
    """An embedding model for `spec`, or ModelLoadError saying why it cannot be one."""
    path = Path(spec.model_path)
    vocab = open_vocab(path)
    try:
        native = NativeModel(path, spec.n_gpu_layers)
    except NativeError as exc:
        raise ModelLoadError(str(exc)) from None
    trained = int(llama_cpp.llama_model_n_ctx_train(native.ptr))
    window = min(spec.n_ctx, trained) if trained > 0 else spec.n_ctx
    try:
        context = EmbeddingContext(
            native, max(spec.n_batch, window), spec.n_parallel, spec.threads()
        )
    except NativeError as exc:
        native.close()
        raise ModelLoadError(str(exc)) from None
    if not context.pooled:
        context.close()
        native.close()
        raise ModelLoadError(
            f"{path} gives no pooled vector per input (pooling type {context.pooling}), so it "
            "cannot serve /v1/embeddings; serve it with `task: generate`"
        )
    return LoadedEmbedding(vocab, native, context, window)


def encode_vector(vector: Vector, encoding: str) -> list[float] | str:
    """OpenAI's `embedding` value: floats, or base64 of little-endian float32."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


class EmbeddingService:
    """Tokenizes, checks the window and shapes the answers of one embedding model."""

    def __init__(self, spec: WorkerSpec, loaded: LoadedEmbedding, embedder: Embedder) -> None:
        self.name = spec.name
        self.normalize = spec.normalize
        self.window = loaded.window
        self._vocab = loaded.vocab
        self._n_vocab = loaded.vocab.n_vocab()
        self.embedder = embedder

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise ModelNotFound(f"this worker serves {self.name}, not {model!r}", param="model")

    def tokens(self, body: EmbeddingRequest) -> list[list[int]]:
        """Each input's tokens, within the window (cut to it with `truncate`)."""
        body.check_dimensions(matryoshka=False)
        out = []
        for index, item in enumerate(body.inputs()):
            if isinstance(item, str):
                tokens = list(self._vocab.tokenize(item.encode(), add_bos=True, special=False))
            else:
                body.check_vocabulary(index, item, self._n_vocab)
                tokens = item
            if len(tokens) > self.window:
                if not body.truncate:
                    raise body.too_long(index, len(tokens), self.window)
                tokens = tokens[: self.window - 1] + tokens[-1:]  # keep the closing token
            out.append(tokens)
        return out

    async def embed(self, request: Request, body: EmbeddingRequest) -> dict[str, Any]:
        self.check_model(body.model)
        inputs = await asyncio.to_thread(self.tokens, body)  # up to 2,048 texts: off the loop
        vectors = await unless_disconnected(request, self.embedder.embed(inputs, self.normalize))
        used = sum(len(tokens) for tokens in inputs)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }

    def stats(self) -> dict[str, int]:
        counters = self.embedder.counters
        return {
            "waiting": self.embedder.waiting,
            "inputs_embedded": counters.inputs,
            "tokens_embedded": counters.tokens,
            "encode_batches": counters.batches,
        }


def create_embedding_app(service: EmbeddingService) -> FastAPI:
    app = worker_app(f"cellar llama.cpp embedding worker: {service.name}", service.stats)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": service.name, "object": "model", "created": 0, "owned_by": "cellar"}]
        return {"object": "list", "data": data}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        return await service.embed(request, body)

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    async def generate() -> None:
        raise InvalidRequest(
            f"model {service.name!r} is an embedding model: it answers /v1/embeddings only",
            param="model",
        )

    return app
