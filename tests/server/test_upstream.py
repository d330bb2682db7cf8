"""A worker's error answers reach clients in one shape, whichever engine sent them."""

from __future__ import annotations

import json

from cellar.server.upstream import normalize_error

VLLM_TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 4096 tokens. However, your prompt "
        "contains at least 4097 input tokens.",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
}


def _error(status: int, body: object, param: str = "prompt") -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    out_status, out = normalize_error(status, raw, "m", param)
    return out_status, json.loads(out)["error"]


def test_vllm_prompt_too_long_becomes_context_length_exceeded() -> None:
    status, error = _error(400, VLLM_TOO_LONG, "messages")
    assert status == 400
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert "4096" in error["message"]


def test_other_vllm_errors_get_string_codes() -> None:
    body = {"error": {"message": "bad", "type": "BadRequestError", "param": "top_k", "code": 400}}
    assert _error(400, body)[1] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "top_k",
        "code": "invalid_request_error",
    }
    status, error = _error(500, {"error": {"message": "boom", "type": "x", "code": 500}})
    assert (status, error["code"], error["type"]) == (502, "engine_error", "server_error")


def test_cellar_shaped_errors_pass_unchanged() -> None:
    body = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": "x"}}
    raw = json.dumps(body).encode()
    assert normalize_error(400, raw, "m", "prompt") == (400, raw)


def test_a_body_that_is_not_json_is_named() -> None:
    status, error = _error(503, b"<html>Service Unavailable</html>")
    assert status == 502
    assert "answered 503" in error["message"] and "Service Unavailable" in error["message"]
