"""Errors from a worker, in Cellar's OpenAI shape whichever engine sent them.

Our llama.cpp worker already answers in that shape. vLLM's server answers with OpenAI's keys but
an integer `code` and its own `type` names, so its errors are mapped onto the same classes the
gateway raises itself, by status and by the structured `param` vLLM sets (never by message).
"""

from __future__ import annotations

import json
from typing import Any

from cellar.errors import (
    ApiError,
    ContextLengthExceeded,
    EngineFailed,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
)

_PROMPT_TOO_LONG_PARAMS = {"input_tokens", "prompt_tokens"}
"""vLLM's `param` when the prompt does not fit the context."""


def _shaped(error: Any) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("type"), str)
        and "param" in error
    )


def error_class(status: int, param: str | None) -> type[ApiError]:
    if status == 400 and param in _PROMPT_TOO_LONG_PARAMS:
        return ContextLengthExceeded
    if status == 404:
        return ModelNotFound
    if status == 429:
        return Overloaded
    if 400 <= status < 500:
        return InvalidRequest
    return EngineFailed


def normalize_error(status: int, body: bytes, model: str, prompt_param: str) -> tuple[int, bytes]:
    """The status and body to send the client for a worker's non-200 answer.

    `prompt_param` names the prompt's field (`messages` or `prompt`) for context errors.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if _shaped(error):
        return status, body
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
        param = error.get("param") if isinstance(error.get("param"), str) else None
    else:
        text = body.decode("utf-8", "replace").strip()[:500]
        message = f"the worker for model {model!r} answered {status}: {text or 'no body'}"
        param = None
    cls = error_class(status, param)
    if cls is ContextLengthExceeded:
        param = prompt_param
    shaped = cls(message, param=param)
    # A client error keeps the worker's status (400, 404, 422...); a server error is a 502.
    return status if status < 500 else cls.status, json.dumps(shaped.body()).encode()
