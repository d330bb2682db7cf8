"""Engine fields a client adds beside OpenAI's: bounded, or refused, never passed on blindly.

Attacks: vLLM's own structured-output fields with a regex, grammar or schema whose automaton
explodes; vLLM fields that reach unsafe code (`prompt_embeds` unpickles tensors) or rewrite the
prompt's turns (`chat_template`, `add_special_tokens`); stop strings long enough to make every
token's stop search slow.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from cellar.engines.llamacpp.launcher import LlamaCppDialect
from cellar.engines.passthrough import MAX_EXPANSION
from cellar.engines.vllm.dialect import VllmDialect
from cellar.errors import InvalidRequest
from cellar.protocol import MAX_STOP_CHARS, ChatCompletionRequest
from tests.gateway import MODEL, Gateway

NESTED_REGEX = "((a{200}){200}){200}"
SCHEMA_BOMB = {"type": "array", "items": {"type": "string"}, "minItems": 10**9}
MESSAGES: list[Any] = [{"role": "user", "content": "Answer yes or no: is water wet?"}]


def _chat(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **extra})


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"guided_regex": NESTED_REGEX}, "guided_regex"),
        ({"structured_outputs": {"regex": "x" * 5000}}, "structured_outputs.regex"),
        ({"guided_grammar": 'root ::= (("a"{256}){256}){4}'}, "guided_grammar"),
        ({"guided_json": SCHEMA_BOMB}, "response_format"),
        ({"structured_outputs": {"json": SCHEMA_BOMB}}, "response_format"),
        ({"guided_choice": ["x"] * 1000}, "guided_choice"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_regex"),
        ({"prompt_embeds": "gASVAAAAAAAAAAA="}, "prompt_embeds"),
        ({"chat_template": "{{ 'forged' }}"}, "chat_template"),
        ({"add_special_tokens": True}, "add_special_tokens"),
        ({"logits_processors": ["os.system"]}, "logits_processors"),
        ({"allowed_token_ids": list(range(70000))}, "allowed_token_ids"),
    ],
)
def test_vllm_gets_only_bounded_extensions(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        VllmDialect().prepare("/v1/chat/completions", _chat(**extra))
    assert caught.value.param == param, caught.value.message


def test_bounded_extensions_pass_to_vllm_in_its_shape() -> None:
    dialect = VllmDialect(stop_token_ids=(1, 106))
    sent = dialect.prepare(
        "/v1/chat/completions",
        _chat(guided_regex=r"\d{3}-\d{4}", min_tokens=2, stop_token_ids=[7], store=False),
    )
    assert sent["structured_outputs"] == {"regex": r"\d{3}-\d{4}"}
    assert sent["min_tokens"] == 2 and sent["store"] is False
    assert sent["stop_token_ids"] == [1, 106, 7]
    assert "guided_regex" not in sent
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    sent = dialect.prepare("/v1/chat/completions", _chat(guided_json=schema))
    assert "root ::=" in sent["structured_outputs"]["grammar"]  # the bounded grammar, as for
    # response_format


def test_the_repeat_product_bound_counts_nesting() -> None:
    assert 200 * 200 * 200 > MAX_EXPANSION >= 200 * 200
    VllmDialect().prepare("/v1/chat/completions", _chat(guided_regex="(a{200}){200}"))


def test_llamacpp_refuses_vllm_structured_fields_rather_than_ignore_them() -> None:
    with pytest.raises(InvalidRequest) as caught:
        LlamaCppDialect().prepare("/v1/chat/completions", _chat(guided_choice=["yes", "no"]))
    assert caught.value.param == "guided_choice" and "response_format" in caught.value.message


@pytest.mark.slow
def test_the_gateway_refuses_them_at_once(gateway: Gateway) -> None:
    client = gateway.client()
    for extra, param in (
        ({"guided_regex": NESTED_REGEX}, "guided_regex"),
        ({"guided_json": SCHEMA_BOMB}, "response_format"),
        ({"stop": ["x" * (MAX_STOP_CHARS + 1)]}, "stop"),
    ):
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=4, extra_body=extra
            )
        assert time.monotonic() - started < 1.0
        assert (caught.value.param or "").startswith(param), caught.value.body


@pytest.mark.slow
def test_a_bounded_vllm_choice_is_enforced(gateway: Gateway) -> None:
    client = gateway.client()
    extra = {"guided_choice": ["yes", "no"]}
    if gateway.admin_models()[MODEL]["engine"] == "llamacpp":
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body=extra)
        return
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, extra_body=extra
    )
    assert answer.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_body={"prompt_embeds": "gASV"}
        )
    assert caught.value.param == "prompt_embeds"
