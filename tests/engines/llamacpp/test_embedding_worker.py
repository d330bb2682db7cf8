"""A llama.cpp worker serving the bundled embedding model, driven by the official `openai` SDK
over real HTTP: every input form, both encodings, and each refusal with its code and param."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import numpy as np
import openai
import pytest

from tests.minilm import MAX_SEQ_LENGTH, Reference
from tests.worker import BareWorker, bare_worker

pytestmark = pytest.mark.slow

NAME = "minilm"
TEXTS = [
    "Where is the nearest pharmacy?",
    "Nhà thuốc gần nhất ở đâu?",
    "The invoice is due at the end of the month.",
]


@pytest.fixture(scope="module")
def embedding_worker(
    minilm_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BareWorker]:
    log = tmp_path_factory.mktemp("embedding-worker") / "worker.log"
    settings: dict[str, Any] = {"name": NAME, "task": "embed", "n_ctx": MAX_SEQ_LENGTH}
    with bare_worker(minilm_gguf, log, n_parallel=32, n_batch=4096, **settings) as worker:
        yield worker


@pytest.fixture(scope="module")
def client(embedding_worker: BareWorker) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{embedding_worker.url}/v1", api_key=embedding_worker.secret
    ) as made:
        yield made


def _error(embedding_worker: BareWorker, body: dict[str, object]) -> dict[str, object]:
    response = httpx.post(
        f"{embedding_worker.url}/v1/embeddings", json=body, headers=embedding_worker.headers
    )
    assert response.status_code == 400, response.text
    error: dict[str, object] = response.json()["error"]
    return error


def test_every_input_form_matches_the_reference(
    client: openai.OpenAI, minilm_reference: Reference, minilm_gguf: Path
) -> None:
    one = client.embeddings.create(model=NAME, input=TEXTS[0])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert float(np.dot(one.data[0].embedding, minilm_reference(TEXTS[0]))) >= 0.999
    many = client.embeddings.create(model=NAME, input=TEXTS, encoding_format="float")
    assert [item.index for item in many.data] == [0, 1, 2]
    for item, text in zip(many.data, TEXTS, strict=True):
        assert float(np.dot(item.embedding, minilm_reference(text))) >= 0.999
    assert many.usage.prompt_tokens == many.usage.total_tokens > 3 * 3
    vocab = llama_cpp.Llama(str(minilm_gguf), vocab_only=True, verbose=False)
    tokens = list(vocab.tokenize(TEXTS[0].encode(), add_bos=True, special=False))
    assert tokens[0] == 101 and tokens[-1] == 102  # [CLS] ... [SEP]
    by_tokens = client.embeddings.create(model=NAME, input=tokens)
    assert by_tokens.usage.prompt_tokens == len(tokens)
    assert float(np.dot(by_tokens.data[0].embedding, one.data[0].embedding)) >= 0.9999
    lists = client.embeddings.create(model=NAME, input=[tokens, [*tokens[:4], 102]])
    assert len(lists.data) == 2


def test_base64_is_little_endian_float32(
    embedding_worker: BareWorker, minilm_reference: Reference
) -> None:
    body = {"model": NAME, "input": TEXTS[1], "encoding_format": "base64"}
    response = httpx.post(
        f"{embedding_worker.url}/v1/embeddings", json=body, headers=embedding_worker.headers
    )
    raw = response.json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    assert float(vector @ minilm_reference(TEXTS[1])) >= 0.999


def test_refusals_name_the_input(embedding_worker: BareWorker, client: openai.OpenAI) -> None:
    assert _error(embedding_worker, {"model": NAME, "input": ""})["param"] == "input"
    assert _error(embedding_worker, {"model": NAME, "input": []})["param"] == "input"
    assert _error(embedding_worker, {"model": NAME, "input": ["ok", ""]})["param"] == "input[1]"
    long = " ".join(["word"] * 400)
    error = _error(embedding_worker, {"model": NAME, "input": ["short", long]})
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input[1]")
    cut = client.embeddings.create(model=NAME, input=[long], extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == MAX_SEQ_LENGTH
    error = _error(embedding_worker, {"model": NAME, "input": "x", "dimensions": 64})
    assert (error["code"], error["param"]) == ("unsupported_parameter", "dimensions")
    error = _error(embedding_worker, {"model": NAME, "input": [[10**6]]})
    assert error["param"] == "input[0]"
    response = httpx.post(
        f"{embedding_worker.url}/v1/chat/completions",
        json={"model": NAME, "messages": [{"role": "user", "content": "hi"}]},
        headers=embedding_worker.headers,
    )
    assert response.status_code == 400 and "embedding model" in response.json()["error"]["message"]


def test_two_thousand_inputs_in_one_request(client: openai.OpenAI) -> None:
    texts = [f"Passage {i}: the shipment number {i} left the warehouse." for i in range(2000)]
    answer = client.embeddings.create(model=NAME, input=texts)
    assert [item.index for item in answer.data] == list(range(2000))
    first, again = answer.data[7].embedding, client.embeddings.create(model=NAME, input=texts[7])
    assert float(np.dot(first, again.data[0].embedding)) >= 0.9999
