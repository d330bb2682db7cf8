"""`/v1/embeddings` through a real gateway serving an embedding model beside a chat model: the
official `openai` SDK gets vectors that match the reference, each model refuses the other's
route with a 400 that says what it is for, and the requests count in /metrics and the audit
log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cellar.store import ModelStore
from tests.gateway import MODEL, Gateway, default_models, start_gateway
from tests.minilm import MAX_SEQ_LENGTH, Reference

pytestmark = pytest.mark.slow

EMBEDDER = "minilm"
PASSAGES = [
    "The pharmacy on Lê Lợi street opens at seven in the morning.",
    "Invoices are paid within thirty days of receipt.",
    "Hóa đơn được thanh toán trong vòng ba mươi ngày.",
    "Our support line answers every weekday from nine to five.",
]


@pytest.fixture(scope="module")
def two_models(
    tmp_path_factory: pytest.TempPathFactory, store: ModelStore, minilm_gguf: Path
) -> Iterator[Gateway]:
    embedder = {
        "name": EMBEDDER,
        "source": str(minilm_gguf),
        "task": "embed",
        "preload": True,
        "llamacpp": {"n_ctx": MAX_SEQ_LENGTH, "n_parallel": 32, "n_batch": 4096},
    }
    with start_gateway(
        tmp_path_factory.mktemp("embeddings"), store.root, [*default_models(), embedder]
    ) as gateway:
        yield gateway


def test_vectors_through_the_gateway_match_the_reference(
    two_models: Gateway, minilm_reference: Reference
) -> None:
    answer = two_models.client().embeddings.create(model=EMBEDDER, input=PASSAGES)
    assert answer.model == EMBEDDER and len(answer.data) == len(PASSAGES)
    for item, text in zip(answer.data, PASSAGES, strict=True):
        assert float(np.dot(item.embedding, minilm_reference(text))) >= 0.999
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(PASSAGES)


def test_each_model_refuses_the_other_route(two_models: Gateway) -> None:
    client = two_models.client()
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model=EMBEDDER, messages=[{"role": "user", "content": "hello"}]
        )
    assert "embedding model" in str(chat.value)
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model=MODEL, input="hello")
    assert "gives no embeddings" in str(embed.value)
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model=EMBEDDER, input=["fine", ""])
    assert empty.value.body["param"] == "input[1]"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hello")


def test_embeddings_count_in_metrics_and_audit(two_models: Gateway) -> None:
    answer = two_models.client().embeddings.create(model=EMBEDDER, input="count me")
    with two_models.http() as http:
        text = http.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    ok = samples[("cellar:requests_total", (("model_name", EMBEDDER), ("status", "200")))]
    assert ok >= 1
    assert samples[("cellar:prompt_tokens_total", (("model_name", EMBEDDER),))] >= (
        answer.usage.prompt_tokens
    )
    audit = two_models.log.parent / "audit" / "audit.jsonl"
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("model") == EMBEDDER]
    assert mine and all("count me" not in json.dumps(line) for line in mine)
