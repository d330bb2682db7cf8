"""Every client error gets its OpenAI-shaped status and code, never a 500."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.gateway import MODEL, N_CTX, Gateway

pytestmark = pytest.mark.slow

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["code"], str)
    return dict(body["error"])


def test_unknown_model_is_404_model_not_found(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert "no-such-model" in caught.value.message


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_json_is_400(gateway: Gateway, path: str) -> None:
    with gateway.http() as http:
        response = http.post(
            path,
            content=b'{"model": "x", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    error = _error(response)
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": -3}, "max_tokens"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": MESSAGES, "stop": 5}, "stop"),
        ({"model": MODEL, "messages": MESSAGES, "stream": "yes please"}, "stream"),
        (["not", "an", "object"], None),
    ],
)
def test_wrong_types_are_400_naming_the_field(gateway: Gateway, body: Any, param: str) -> None:
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["code"] == "invalid_request_error"
    if param:
        assert error["param"] is not None and error["param"].startswith(param)


def test_more_choices_than_allowed_is_a_400_naming_n(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES, n=17)
    assert caught.value.param == "n" and "16" in str(caught.value)


def test_prompt_plus_max_tokens_over_context_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=N_CTX,
        )
    assert caught.value.code == "context_length_exceeded"
    assert str(N_CTX) in caught.value.message


def test_prompt_longer_than_context_is_400_streamed_or_not(gateway: Gateway) -> None:
    client = gateway.client()
    long_prompt = "word " * (N_CTX + 50)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4, stream=True)
    assert caught.value.code == "context_length_exceeded"


def test_unknown_route_is_openai_shaped_404(gateway: Gateway) -> None:
    with gateway.http() as http:
        response = http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"


def test_gateway_still_serves_after_errors(gateway: Gateway) -> None:
    reply = gateway.client().completions.create(model=MODEL, prompt="Hello", max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
