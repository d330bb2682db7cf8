"""`cellar quantize` on the bundled embedding model: its checkpoint becomes an f16 GGUF with
lineage (as `make setup` does it), and quantizing further is judged by what retrieval sees
(cosine to the source's vectors, top-5 neighbours) instead of perplexity."""

from __future__ import annotations

import json

import pytest

from cellar.store import ModelStore
from tests.embeddings.conftest import CHECKPOINT, GGUF
from tests.gateway import run_cellar

pytestmark = pytest.mark.slow


def test_the_checkpoint_became_an_f16_gguf_with_lineage(embedding_store: ModelStore) -> None:
    made, source = embedding_store.get(GGUF), embedding_store.get(CHECKPOINT)
    assert made.format == "gguf" and made.lineage is not None
    assert made.lineage.parent_sha256 == source.sha256
    assert made.lineage.method == "llama.cpp-convert+quantize"
    assert made.lineage.report is not None and made.lineage.report["mean_cosine"] > 0.9999
    report = json.loads((embedding_store.root / GGUF / "report.json").read_text())
    assert report["task"] == "embed" and report["gate"]["passed"]


def test_q8_passes_the_embedding_gate_and_q4_0_does_not(embedding_store: ModelStore) -> None:
    root = str(embedding_store.root)
    done = run_cellar("quantize", GGUF, "--to", "q8_0", "--store", root)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "cosine to the source" in done.stdout and "top-5 neighbours" in done.stdout
    q8 = embedding_store.get("all-minilm-l6-v2-q8_0")
    assert q8.lineage is not None and q8.lineage.report is not None
    figures = q8.lineage.report
    assert figures["mean_cosine"] >= 0.999 and figures["top5_agreement"] >= 0.9
    assert "ppl_increase" not in figures
    assert q8.lineage.parameters["min_cosine"] == 0.999
    text = (embedding_store.root / "all-minilm-l6-v2-q8_0" / "report.md").read_text()
    assert "Gate: mean cosine at least 0.99900" in text

    done = run_cellar("quantize", GGUF, "--to", "q4_0", "--store", root)
    assert done.returncode == 1
    assert "mean cosine similarity" in done.stderr and "nothing was registered" in done.stderr
    assert all(m.name != "all-minilm-l6-v2-q4_0" for m in embedding_store.list())
    bnb = run_cellar("quantize", CHECKPOINT, "--to", "bnb-int8", "--store", root)
    assert bnb.returncode != 0 and "embedding model" in bnb.stderr
