"""Quality and speed of a quantized embedding model next to its source, measured with llama.cpp.

Perplexity means nothing for a model that gives one vector per text, so an embedding model is
judged by what retrieval sees:

- Cosine: every sentence of the evaluation text is embedded by both models; the mean (and the
  lowest) cosine similarity between the two vectors of the same sentence.
- Top-5 agreement: each sentence in turn is a query against all the others; the share of the
  source model's 5 nearest neighbours that the result also puts in its top 5, averaged over the
  queries (1.0: every ranking that matters is unchanged).
- Speed: inputs/s and tokens/s embedding all sentences in batches (median of 3 passes), RAM at
  load and file size.

Runs in a child process (`python -m cellar.quantize.evaluate_embeddings REQUEST.json OUT.json`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import numpy.typing as npt

from cellar.quantize.evaluate import ram_at_load

NEIGHBOURS = 5
BATCH_TOKENS = 2048
BATCH_INPUTS = 64
MIN_SENTENCES = 2 * NEIGHBOURS
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

Matrix = npt.NDArray[np.float32]


def sentences(text: str) -> list[str]:
    """The evaluation texts: the text's sentences (cut at . ! ? before white space)."""
    found = [s.strip() for s in _SENTENCE_END.split(text)]
    return [s for s in found if s]


def embed_all(path: Path, texts: list[str], threads: int) -> tuple[Matrix, list[float], int]:
    """(one L2-normalised row per text, seconds per pass, tokens in all texts)."""
    import llama_cpp

    from cellar.engines.llamacpp.native import EmbeddingContext, NativeModel

    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    model = NativeModel(path, 0)
    window = int(llama_cpp.llama_model_n_ctx_train(model.ptr)) or BATCH_TOKENS
    window = min(window, BATCH_TOKENS)
    context = EmbeddingContext(model, BATCH_TOKENS, BATCH_INPUTS, threads)
    try:
        if not context.pooled:
            raise ValueError(f"{path} gives no pooled vector per input; it is no embedding model")
        tokenized = []
        for text in texts:
            tokens = vocab.tokenize(text.encode(), add_bos=True, special=False)
            tokenized.append(
                tokens if len(tokens) <= window else tokens[: window - 1] + tokens[-1:]
            )
        passes: list[float] = []
        rows: list[npt.NDArray[np.float32]] = []
        for _ in range(3):
            rows = []
            started = time.perf_counter()
            for tokens in tokenized:
                if not context.fits(len(tokens)):
                    rows.extend(context.run())
                context.add(tokens)
            rows.extend(context.run())
            passes.append(time.perf_counter() - started)
    finally:
        context.close()
        model.close()
    vectors = np.stack(rows).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, passes, sum(len(t) for t in tokenized)


def top_k(vectors: Matrix, k: int) -> npt.NDArray[np.int64]:
    """Each row's k nearest other rows by cosine, nearest first."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    order: npt.NDArray[np.int64] = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order


def compare(source: Matrix, result: Matrix) -> dict[str, float]:
    cosines = (source * result).sum(axis=1)
    a, b = top_k(source, NEIGHBOURS), top_k(result, NEIGHBOURS)
    overlap = [
        len(set(x) & set(y)) / NEIGHBOURS for x, y in zip(a.tolist(), b.tolist(), strict=True)
    ]
    return {
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
        "top5_agreement": float(np.mean(overlap)),
    }


def main() -> int:
    request = json.loads(Path(sys.argv[1]).read_text())
    source, result = Path(request["source"]), Path(request["result"])
    texts = sentences(Path(request["text"]).read_text(encoding="utf-8"))
    if len(texts) < MIN_SENTENCES:
        raise ValueError(
            f"the evaluation text has {len(texts)} sentences; it needs {MIN_SENTENCES}"
        )
    threads = int(request["threads"])
    report: dict[str, Any] = {"eval_texts": len(texts)}
    vectors = {}
    for role, path in (("source", source), ("result", result)):
        vectors[role], passes, tokens = embed_all(path, texts, threads)
        seconds = median(passes)
        report[role] = {
            "inputs_per_s": len(texts) / seconds,
            "tokens_per_s": tokens / seconds,
            "ram_at_load_bytes": ram_at_load(path),
            "file_bytes": path.stat().st_size,
        }
        report["eval_tokens"] = tokens
    report.update(compare(vectors["source"], vectors["result"]))
    Path(sys.argv[2]).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
