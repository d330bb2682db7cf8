"""How the gateway talks to vLLM's server beyond plain OpenAI.

- Structured output: `response_format` becomes the same GBNF grammar the llama.cpp worker
  enforces (engines/grammar.py), sent as vLLM's `structured_outputs.grammar`, so a schema means
  the same JSON language on both engines.
- No message can spell a control token (engines/vllm/control.py).
- Its own request fields pass only as engines/passthrough.py allows, bounded.
- Load: vLLM counts its running and waiting requests in its Prometheus metrics.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cellar.engines.grammar import grammar_for
from cellar.engines.passthrough import vllm_extras
from cellar.engines.vllm.control import Defuser
from cellar.errors import InvalidRequest
from cellar.protocol import CompletionBody

_EMPTY_FIRST_ALTERNATIVE = re.compile(r"::=(\s*)\|")
"""`ws ::= | " "`: GBNF allows an empty first alternative, vLLM's grammar engine (xgrammar)
wants it spelled as an empty string."""
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"


class VllmDialect:
    def __init__(
        self, stop_token_ids: tuple[int, ...] = (), control_texts: tuple[str, ...] = ()
    ) -> None:
        self.stop_token_ids = stop_token_ids
        """Every token the model's generation ends at (llama.cpp's end-of-generation set):
        vLLM stops at the tokenizer's EOS only."""
        self._defuser = Defuser(control_texts)

    def prepare(self, path: str, request: CompletionBody) -> dict[str, Any]:
        extra = request.model_extra or {}
        payload = {
            k: v
            for k, v in request.model_dump(exclude_unset=True, by_alias=True).items()
            if k not in extra
        }
        payload.update(vllm_extras(extra))  # bounded; 400 for a field Cellar does not pass
        if isinstance(payload.get("messages"), list):
            self._defuser.messages(payload["messages"])
        if self.stop_token_ids and not request.ignore_eos:
            ends = [*self.stop_token_ids, *payload.get("stop_token_ids", ())]
            payload["stop_token_ids"] = list(dict.fromkeys(ends))
        grammar = grammar_for(request.response_format)
        if grammar is not None:
            if "structured_outputs" in payload:
                raise InvalidRequest(
                    "give `response_format` or vLLM's structured output, not both",
                    param="response_format",
                )
            del payload["response_format"]
            payload["structured_outputs"] = {"grammar": grammar}
        structured = payload.get("structured_outputs")
        if structured is not None and "grammar" in structured:
            structured["grammar"] = _EMPTY_FIRST_ALTERNATIVE.sub(
                r'::=\1"" |', structured["grammar"]
            )
        return payload

    async def load(self, client: httpx.AsyncClient) -> tuple[int, int] | None:
        try:
            text = (await client.get("/metrics", timeout=1.0)).text
        except httpx.HTTPError:
            return None
        totals = {_RUNNING: 0.0, _WAITING: 0.0}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in totals:
                        totals[sample.name] += sample.value
        except ValueError:
            return None
        return int(totals[_RUNNING]), int(totals[_WAITING])
