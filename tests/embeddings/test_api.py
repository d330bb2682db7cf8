"""`/v1/embeddings` through a real gateway, the same suite on both engines (llama.cpp serving the
GGUF `cellar quantize` made, vLLM's pooling runner serving the checkpoint), with the official
`openai` SDK: vectors as sentence-transformers gives them, every input form and encoding, each
refusal with its code and param, the limits, and the gateway's accounting."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from cellar.benchmarks.suite.record import load_run
from cellar.cpus import parse_cpu_list
from tests.embedding_data import PASSAGES, QUESTIONS, VIETNAMESE
from tests.embeddings.conftest import EMBEDDER, WINDOW
from tests.gateway import MODEL, Gateway, run_cellar
from tests.minilm import Reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer(minilm_checkpoint: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(minilm_checkpoint / "tokenizer.json"))
    tokenizer.no_truncation()  # the file pads and cuts to 128; sentence-transformers: 256
    tokenizer.no_padding()
    return tokenizer


def _near_window(tokenizer: Tokenizer, sentences: list[str], start: int) -> str:
    """Sentences joined from `start` on until the text is just under the window."""
    text = ""
    for i in range(len(sentences)):
        longer = f"{text} {sentences[(start + i) % len(sentences)]}".strip()
        if len(tokenizer.encode(longer).ids) > WINDOW:
            break
        text = longer
    assert len(tokenizer.encode(text).ids) > WINDOW - 40
    return text


def fifty_texts(tokenizer: Tokenizer) -> list[str]:
    """20 short English, 20 short Vietnamese, 5 + 5 near the window."""
    english = [p for p in PASSAGES if len(p) < 120][:20]
    vietnamese = VIETNAMESE[:20]
    long_en = [_near_window(tokenizer, PASSAGES, 6 * i) for i in range(5)]
    long_vi = [_near_window(tokenizer, VIETNAMESE, 4 * i) for i in range(5)]
    texts = english + vietnamese + long_en + long_vi
    assert len(set(texts)) == 50
    return texts


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _error(gateway: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    with gateway.http() as http:
        response = http.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_vectors_match_sentence_transformers(
    embedding_gateway: Gateway, minilm_reference: Reference, tokenizer: Tokenizer
) -> None:
    texts = fifty_texts(tokenizer)
    client = embedding_gateway.client()
    answer = client.embeddings.create(model=EMBEDDER, input=texts)
    assert answer.model == EMBEDDER and [d.index for d in answer.data] == list(range(50))
    for item, text in zip(answer.data, texts, strict=True):
        assert _cosine(item.embedding, minilm_reference(text)) >= 0.999, text
        assert abs(np.linalg.norm(item.embedding) - 1) < 1e-3  # normalized, as configured
    expected = sum(len(tokenizer.encode(t).ids) for t in texts)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == expected
    # the same text alone and inside a batch of 64 mixed with others: the same vector
    mixed = [*PASSAGES, *VIETNAMESE, *texts[:14]]
    assert len(mixed) == 64
    batch = client.embeddings.create(model=EMBEDDER, input=mixed)
    for index in (0, 35, 50, 63):
        alone = client.embeddings.create(model=EMBEDDER, input=mixed[index])
        assert _cosine(alone.data[0].embedding, batch.data[index].embedding) >= 0.9999


def test_every_input_form_and_encoding(
    embedding_gateway: Gateway, minilm_reference: Reference, tokenizer: Tokenizer
) -> None:
    client = embedding_gateway.client()
    text = VIETNAMESE[4]
    one = client.embeddings.create(model=EMBEDDER, input=text)
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    tokens = tokenizer.encode(text).ids
    assert tokens[0] == 101 and tokens[-1] == 102  # [CLS] ... [SEP]
    by_tokens = client.embeddings.create(model=EMBEDDER, input=tokens)
    assert by_tokens.usage.prompt_tokens == len(tokens)
    assert _cosine(by_tokens.data[0].embedding, one.data[0].embedding) >= 0.9999
    lists = client.embeddings.create(model=EMBEDDER, input=[tokens, [*tokens[:4], 102]])
    assert len(lists.data) == 2
    with embedding_gateway.http() as http:
        raw = http.post(
            "/v1/embeddings",
            json={"model": EMBEDDER, "input": [text], "encoding_format": "base64"},
        ).json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    assert _cosine(vector, minilm_reference(text)) >= 0.999
    # the SDK asks for base64 by default and decodes it: the same floats
    assert _cosine(vector, one.data[0].embedding) >= 0.99999


def test_refusals_name_the_input(embedding_gateway: Gateway) -> None:
    gateway = embedding_gateway
    assert _error(gateway, {"model": EMBEDDER, "input": ""})["param"] == "input"
    assert _error(gateway, {"model": EMBEDDER, "input": []})["param"] == "input"
    assert _error(gateway, {"model": EMBEDDER, "input": ["ok", ""]})["param"] == "input[1]"
    long = " ".join(["word"] * 400)
    error = _error(gateway, {"model": EMBEDDER, "input": ["short", long]})
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input[1]")
    assert f"at most {WINDOW}" in error["message"]
    cut = gateway.client().embeddings.create(
        model=EMBEDDER, input=[long], extra_body={"truncate": True}
    )
    assert cut.usage.prompt_tokens == WINDOW
    error = _error(gateway, {"model": EMBEDDER, "input": "x", "dimensions": 64})
    assert error["param"] == "dimensions"
    assert _error(gateway, {"model": EMBEDDER, "input": [[5, 10**6]]})["param"] == "input[0]"
    assert _error(gateway, {"model": EMBEDDER, "input": "x" * 10, "junk": 1})["param"] == "junk"
    with pytest.raises(openai.BadRequestError) as chat:
        gateway.client().chat.completions.create(
            model=EMBEDDER, messages=[{"role": "user", "content": "hello"}]
        )
    assert "embedding model" in str(chat.value)
    with pytest.raises(openai.BadRequestError) as embed:
        gateway.client().embeddings.create(model=MODEL, input="hello")
    assert "gives no embeddings" in str(embed.value)
    with pytest.raises(openai.NotFoundError):
        gateway.client().embeddings.create(model="no-such-model", input="hello")


def test_two_thousand_inputs_without_stalling_the_chat_model(embedding_gateway: Gateway) -> None:
    client = embedding_gateway.client()
    texts = [
        f"Passage {i}: shipment {i} left the warehouse at {i % 24} o'clock." for i in range(2000)
    ]
    answers: list[Any] = []
    big = threading.Thread(
        target=lambda: answers.append(client.embeddings.create(model=EMBEDDER, input=texts))
    )
    big.start()
    answered_meanwhile = 0  # chat answers that came back while the 2000 inputs were embedding
    while big.is_alive() and answered_meanwhile < 5:
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
        answered_meanwhile += big.is_alive()
    big.join(timeout=600)
    [answer] = answers
    assert [item.index for item in answer.data] == list(range(2000))
    again = client.embeddings.create(model=EMBEDDER, input=texts[1234])
    assert _cosine(answer.data[1234].embedding, again.data[0].embedding) >= 0.9999
    assert answered_meanwhile  # the chat model was not queued behind the big request
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model=EMBEDDER, input=["x"] * 2049)
    assert "2048" in str(too_many.value)


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [d for child in children for d in _descendants(int(child))]


def _allowed_cores(pid: int) -> set[int]:
    """The union of the cores every thread of `pid` may run on."""
    cores: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cores |= parse_cpu_list(line.split(":", 1)[1].strip())
    return cores


def test_each_worker_runs_on_the_cores_it_was_given(embedding_gateway: Gateway) -> None:
    """Every thread of every process of a pinned worker (vLLM: the guard, its API server, its
    engine core and their OpenMP threads) stays on the worker's cores; an unpinned one may use
    all of the gateway's."""
    everywhere = set(os.sched_getaffinity(0))
    for name, model in embedding_gateway.admin_models().items():
        wanted = parse_cpu_list(model["cpus"]) if model["cpus"] else everywhere
        processes = _descendants(model["pid"])
        assert len(processes) >= (3 if model["engine"] == "vllm" else 1), name
        for pid in processes:
            assert _allowed_cores(pid) == wanted, (name, pid)


def test_retrieval_finds_the_passage_like_the_reference(
    embedding_gateway: Gateway, minilm_reference: Reference
) -> None:
    client = embedding_gateway.client()
    passages = np.asarray(
        [d.embedding for d in client.embeddings.create(model=EMBEDDER, input=PASSAGES).data]
    )
    questions = [q for q, _ in QUESTIONS]
    asked = np.asarray(
        [d.embedding for d in client.embeddings.create(model=EMBEDDER, input=questions).data]
    )
    reference_passages = np.asarray([minilm_reference(p) for p in PASSAGES])

    def hits(queries: Any, corpus: Any) -> list[bool]:
        top3 = np.argsort(-(queries @ corpus.T), axis=1)[:, :3]
        return [answer in row for row, (_, answer) in zip(top3.tolist(), QUESTIONS, strict=True)]

    ours = hits(asked, passages)
    reference = hits(np.asarray([minilm_reference(q) for q in questions]), reference_passages)
    assert sum(ours) >= 9 and ours == reference


def test_metrics_audit_and_fingerprint(embedding_gateway: Gateway) -> None:
    answer = embedding_gateway.client().embeddings.create(model=EMBEDDER, input="count me")
    with embedding_gateway.http() as http:
        text = http.get("/metrics").text
        system = http.get("/admin/system").json()
    [facts] = [m for m in system["models"] if m["name"] == EMBEDDER]
    assert facts["task"] == "embed" and len(facts["sha256"]) == 64
    assert facts["quantization"] == ("f16" if facts["engine"] == "llamacpp" else "float32")
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
    audit = embedding_gateway.log.parent / "audit" / "audit.jsonl"
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("model") == EMBEDDER]
    assert mine and all("count me" not in json.dumps(line) for line in mine)


def test_langchain_embeds_documents_and_queries(
    embedding_gateway: Gateway, minilm_reference: Reference
) -> None:
    from langchain_openai import OpenAIEmbeddings

    with httpx.Client(timeout=120) as http:  # closed here, not when the collector gets to it
        embeddings = OpenAIEmbeddings(
            model=EMBEDDER,
            openai_api_base=f"{embedding_gateway.base_url}/v1",
            openai_api_key="unused",
            check_embedding_ctx_length=False,  # send text, not tiktoken ids
            http_client=http,
        )
        documents = embeddings.embed_documents(PASSAGES[:3])
        assert len(documents) == 3
        for vector, text in zip(documents, PASSAGES, strict=False):
            assert _cosine(vector, minilm_reference(text)) >= 0.999
        query = embeddings.embed_query(QUESTIONS[0][0])
        assert _cosine(query, minilm_reference(QUESTIONS[0][0])) >= 0.999


def test_the_canary_checks_cosine_bounds(embedding_gateway: Gateway) -> None:
    with embedding_gateway.http() as http:
        answer = http.post("/admin/canary", params={"model": EMBEDDER}, timeout=120).json()
    verdicts = {r["prompt"]: (r["passed"], r["detail"]) for r in answer["results"]}
    assert verdicts["same meaning"] == (True, "") and verdicts["unrelated"] == (True, "")
    passed, detail = verdicts["too strict"]
    assert not passed and "is above 0.2" in detail


def test_cellar_bench_measures_embeddings(embedding_gateway: Gateway, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = run_cellar(
        "bench",
        "--base-url",
        embedding_gateway.base_url,
        "--model",
        EMBEDDER,
        "--api",
        "embeddings",
        "--batch",
        "4",
        "--concurrency",
        "1,2",
        "-n",
        "6",
        "--warmup",
        "1",
        "--no-generator-check",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr + done.stdout
    run = load_run(out / "run.json")
    assert run.endpoint.api == "embeddings" and run.workload.inputs_per_request == 4
    for level in run.levels:
        assert level.metrics is not None and level.metrics.completed == 6
        assert level.metrics.input_throughput > 0 and level.metrics.e2el_ms.p99 is not None
        assert all(r.inputs == 4 and (r.prompt_tokens or 0) > 4 for r in level.results)
    assert "inputs/s" in done.stdout and "inputs/s" in (out / "report.md").read_text()
