"""Engine-specific request fields: which ones a client may send through the gateway, bounded.

The gateway validates OpenAI's fields itself. Other fields in a request are engine extensions;
sent on blindly they would reach code that Cellar's bounds never see (vLLM compiles a regex or
a grammar into an automaton; its `prompt_embeds` unpickles tensors; its per-request
`chat_template` and `add_special_tokens` let a caller rewrite the prompt's turns). So:

- vLLM gets OpenAI's fields, a few sampling extensions with bounds, and structured output by
  its names (`structured_outputs` with one of `json`, `regex`, `choice`, `grammar`,
  `json_object`; or the older `guided_json`, `guided_regex`, `guided_choice`,
  `guided_grammar`). A JSON schema goes through the same bounded schema-to-grammar code as
  `response_format`; a regex or grammar must be short, with bounded repeats whose product
  (how far nesting can multiply an automaton) is bounded too. Any other field is a 400.
- The llama.cpp worker enforces `response_format` only: vLLM's structured-output fields are a
  400 saying so, never silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from cellar.engines.grammar import MAX_REPEAT, MAX_SCHEMA_BYTES, check_schema, grammar_for
from cellar.errors import InvalidRequest
from cellar.protocol import JsonSchemaSpec, ResponseFormat

STRUCTURED_FIELDS = (
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)
_STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object")
MAX_PATTERN_CHARS = 4096
MAX_GRAMMAR_CHARS = 64 * 1024
MAX_EXPANSION = 1 << 16
"""Largest product of the repeat counts in one regex or grammar."""
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1024
MAX_TOKEN_IDS = 65536
MAX_BAD_WORDS = 64
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")

OPENAI_FIELDS = frozenset(
    {
        "audio",
        "echo",
        "function_call",
        "functions",
        "metadata",
        "modalities",
        "prediction",
        "prompt_cache_key",
        "reasoning_effort",
        "safety_identifier",
        "service_tier",
        "store",
        "suffix",
        "verbosity",
        "web_search_options",
    }
)
"""OpenAI fields the gateway's schema does not spell out: passed on as they are."""


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{name}` must be true or false", param=name)
    return value


def _count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1 << 20:
        raise InvalidRequest(f"`{name}` must be a whole number from 0 to {1 << 20}", param=name)
    return value


def _ids(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_TOKEN_IDS:
        raise InvalidRequest(f"`{name}` must be a list of at most {MAX_TOKEN_IDS} ids", param=name)
    return [_count(name, token) for token in value]


def _words(name: str, value: Any) -> list[str]:
    if not (
        isinstance(value, list)
        and len(value) <= MAX_BAD_WORDS
        and all(isinstance(w, str) and len(w) <= 256 for w in value)
    ):
        raise InvalidRequest(
            f"`{name}` must be a list of at most {MAX_BAD_WORDS} strings of 256 characters",
            param=name,
        )
    return value


def _penalty(name: str, value: Any) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 100:
        raise InvalidRequest(f"`{name}` must be a number from -100 to 100", param=name)
    return float(value)


VLLM_SAMPLING = {
    "min_tokens": _count,
    "truncate_prompt_tokens": _count,
    "prompt_logprobs": _count,
    "include_stop_str_in_output": _bool,
    "skip_special_tokens": _bool,
    "spaces_between_special_tokens": _bool,
    "allowed_token_ids": _ids,
    "stop_token_ids": _ids,
    "bad_words": _words,
    "length_penalty": _penalty,
}
"""vLLM's own sampling fields that a client may set, each with its check."""


def check_repeats(text: str, param: str) -> None:
    """Every `{n}` / `{m,n}` in a regex or grammar at most MAX_REPEAT, their product at most
    MAX_EXPANSION (nested repeats multiply the automaton an engine builds)."""
    product = 1
    for low, high in _REPEAT.findall(text):
        count = max(int(low), int(high or 0))
        if count > MAX_REPEAT:
            raise InvalidRequest(f"a repeat of {count} is more than {MAX_REPEAT}", param=param)
        product *= max(count, 1)
        if product > MAX_EXPANSION:
            raise InvalidRequest(
                f"its repeats multiply to more than {MAX_EXPANSION}; simplify it", param=param
            )


def _regex(value: Any, param: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_PATTERN_CHARS:
        raise InvalidRequest(
            f"a regex must be a string of at most {MAX_PATTERN_CHARS} characters", param=param
        )
    check_repeats(value, param)
    try:
        re.compile(value)
    except re.error as exc:
        raise InvalidRequest(f"invalid regex: {exc}", param=param) from None
    return value


def _grammar(value: Any, param: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_GRAMMAR_CHARS:
        raise InvalidRequest(
            f"a grammar must be a string of at most {MAX_GRAMMAR_CHARS} characters", param=param
        )
    check_repeats(value, param)
    return value


def _choice(value: Any, param: str) -> list[str]:
    if not (
        isinstance(value, list)
        and 0 < len(value) <= MAX_CHOICES
        and all(isinstance(c, str) and len(c) <= MAX_CHOICE_CHARS for c in value)
    ):
        raise InvalidRequest(
            f"a choice must be a list of 1 to {MAX_CHOICES} strings of at most "
            f"{MAX_CHOICE_CHARS} characters",
            param=param,
        )
    return value


def _schema(value: Any, param: str) -> ResponseFormat:
    """A JSON schema (object or JSON text) as a `response_format`, checked for its bounds."""
    if isinstance(value, str) and len(value) <= MAX_SCHEMA_BYTES:
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequest("the JSON schema is not valid JSON", param=param) from None
    try:
        spec = JsonSchemaSpec.model_validate({"schema": value})
    except ValueError:
        raise InvalidRequest("the JSON schema must be an object", param=param) from None
    check_schema(spec.schema_)
    return ResponseFormat(type="json_schema", json_schema=spec)


def _structured(kind: str, value: Any, param: str, build: bool) -> dict[str, Any]:
    """vLLM's `structured_outputs` for one kind of constraint, bounded (a JSON schema's
    grammar is built only when `build`: it takes time)."""
    if kind == "json":
        schema = _schema(value, param)
        return {"grammar": grammar_for(schema)} if build else {}
    if kind == "json_object":
        return {"json_object": _bool(param, value)}
    if kind == "regex":
        return {"regex": _regex(value, param)}
    if kind == "choice":
        return {"choice": _choice(value, param)}
    return {"grammar": _grammar(value, param)}


def schema_given(extra: dict[str, Any]) -> bool:
    """Whether the structured-output fields hold a JSON schema (its grammar takes time)."""
    nested = extra.get("structured_outputs")
    return "guided_json" in extra or (isinstance(nested, dict) and "json" in nested)


def structured_outputs(extra: dict[str, Any], build: bool = True) -> dict[str, Any] | None:
    """vLLM's `structured_outputs` from a request's structured-output fields (either spelling),
    bounded; None when it has none. With `build` False, only checked (cheap, before a request
    queues)."""
    given = [name for name in STRUCTURED_FIELDS if name in extra]
    if not given:
        return None
    if len(given) > 1:
        raise InvalidRequest(f"give one of {', '.join(given)}, not several", param=given[0])
    name = given[0]
    if name != "structured_outputs":
        return _structured(name.removeprefix("guided_"), extra[name], name, build)
    value = extra[name]
    kinds = [k for k in value if k in _STRUCTURED_KINDS] if isinstance(value, dict) else []
    if not isinstance(value, dict) or len(kinds) != 1 or len(value) != 1:
        raise InvalidRequest(
            f"`structured_outputs` takes exactly one of {', '.join(_STRUCTURED_KINDS)}",
            param=name,
        )
    return _structured(kinds[0], value[kinds[0]], f"{name}.{kinds[0]}", build)


def vllm_extras(extra: dict[str, Any]) -> dict[str, Any]:
    """The request's extra fields as vLLM may get them (structured output as
    `structured_outputs`); InvalidRequest for a field Cellar does not pass on."""
    out: dict[str, Any] = {}
    for name, value in extra.items():
        if name in OPENAI_FIELDS:
            out[name] = value
        elif name in VLLM_SAMPLING:
            out[name] = VLLM_SAMPLING[name](name, value)
        elif name not in STRUCTURED_FIELDS:
            raise InvalidRequest(
                f"`{name}` is not a parameter Cellar passes to vLLM (its extensions that pass: "
                f"{', '.join(sorted([*VLLM_SAMPLING, *STRUCTURED_FIELDS]))})",
                param=name,
            )
    structured = structured_outputs(extra)
    if structured is not None:
        out["structured_outputs"] = structured
    return out


def refuse_structured_extras(extra: dict[str, Any]) -> None:
    """For an engine that enforces `response_format` only."""
    for name in STRUCTURED_FIELDS:
        if name in extra:
            raise InvalidRequest(
                f"`{name}` is vLLM's; this model runs on llama.cpp: use `response_format`",
                param=name,
            )
