"""How the gateway talks to vLLM's server beyond plain OpenAI.

- Structured output: `response_format` becomes the same GBNF grammar the llama.cpp worker
  enforces (engines/grammar.py), sent as vLLM's `structured_outputs.grammar`, so a schema means
  the same JSON language on both engines.
- No message can spell a control token (engines/vllm/control.py).
- Tools: unless the chat template renders them, the function list, the calls and their
  results are written into the turns in the Hermes format (cellar/toolcalls.py), as the
  llama.cpp worker writes them; the calls follow the same grammar (through vLLM's structured
  outputs: a grammar, or a structural tag triggered by `<tool_call>` for `auto`), and the
  gateway reads them out of vLLM's text with the worker's parser (engines/toolcalls.py).
  vLLM's own Hermes parser would return calls whose numbers and spaces its JSON grammar
  leaves unbounded (a small model then runs to max_tokens and the call comes back as text),
  and re-serializes unstreamed arguments, so they differ from the streamed ones.
- Its own request fields pass only as engines/passthrough.py allows, bounded.
- Embeddings: each input is measured with the checkpoint's own tokenizer before it goes, so an
  input longer than the window gets the same 400 naming its index as on llama.cpp, token ids
  outside the vocabulary never reach vLLM, and `truncate` becomes vLLM's truncation (keeping
  the first tokens and the closing special token, as sentence-transformers does).
- Load: vLLM counts its running and waiting requests in its Prometheus metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cellar.engines.grammar import grammar_for
from cellar.engines.passthrough import vllm_extras
from cellar.engines.toolcalls import CallRewriter, tool_grammar
from cellar.engines.vllm.control import Defuser
from cellar.errors import InvalidRequest
from cellar.protocol import ChatCompletionRequest, CompletionBody, EmbeddingRequest
from cellar.toolcalls import CALL_CLOSE, CALL_OPEN, hermes_turns

_EMPTY_FIRST_ALTERNATIVE = re.compile(r"::=(\s*)\|")
"""`ws ::= | " "`: GBNF allows an empty first alternative, vLLM's grammar engine (xgrammar)
wants it spelled as an empty string."""
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"


def _xgrammar(grammar: str) -> str:
    return _EMPTY_FIRST_ALTERNATIVE.sub(r'::=\1"" |', grammar)


class VllmDialect:
    def __init__(
        self,
        stop_token_ids: tuple[int, ...] = (),
        control_texts: tuple[str, ...] = (),
        measure: InputMeasure | None = None,
        hermes_prompts: bool = True,
    ) -> None:
        self.stop_token_ids = stop_token_ids
        """Every token the model's generation ends at (llama.cpp's end-of-generation set):
        vLLM stops at the tokenizer's EOS only."""
        self._defuser = Defuser(control_texts)
        self._measure = measure
        self._hermes_prompts = hermes_prompts
        """Whether tools and calls are written into the turns (the template does not)."""

    def prepare(self, path: str, request: CompletionBody | EmbeddingRequest) -> dict[str, Any]:
        if isinstance(request, EmbeddingRequest):
            return self._embeddings(request)
        extra = request.model_extra or {}
        payload = {
            k: v
            for k, v in request.model_dump(exclude_unset=True, by_alias=True).items()
            if k not in extra
        }
        payload.update(vllm_extras(extra))  # bounded; 400 for a field Cellar does not pass
        if isinstance(request, ChatCompletionRequest):
            self._tools(request, payload)
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
            structured["grammar"] = _xgrammar(structured["grammar"])
        return payload

    def _tools(self, request: ChatCompletionRequest, payload: dict[str, Any]) -> None:
        """Tools as the llama.cpp worker takes them: the Hermes turns, and the calls under
        Cellar's grammar (whole for `required` or a named function; for `auto` a structural
        tag applies it from `<tool_call>` on). vLLM neither constrains nor parses calls
        itself: the gateway reads them out of its text (`rewriter`), as the llama.cpp worker
        does. A template that renders tools gets them, with `tool_choice: none` for vLLM."""
        messages = request.messages
        payload.pop("parallel_tool_calls", None)
        if not self._hermes_prompts:
            if request.tools:  # the template renders them; vLLM neither constrains nor parses
                payload["tool_choice"] = "none"
        else:
            if request.tools or any(m.tool_calls or m.role == "tool" for m in messages):
                payload["messages"] = hermes_turns(messages, request.callable_tools())
            payload.pop("tools", None)
            payload.pop("tool_choice", None)
        calls = tool_grammar(request)
        if calls is None:
            return
        if "structured_outputs" in payload:
            raise InvalidRequest(
                "give `tools` or vLLM's structured output, not both", param="structured_outputs"
            )
        if calls.trigger is None:
            payload["structured_outputs"] = {"grammar": calls.text}
            return
        tag = {
            "type": "structural_tag",
            "format": {
                "type": "triggered_tags",
                "triggers": [calls.trigger],
                "tags": [
                    {
                        "begin": f"{CALL_OPEN}\n",
                        "content": {"type": "grammar", "grammar": _xgrammar(calls.call)},
                        "end": f"\n{CALL_CLOSE}",
                    }
                ],
                "stop_after_first": request.one_call_only(),
            },
        }
        payload["structured_outputs"] = {"structural_tag": json.dumps(tag)}

    def rewriter(self, request: CompletionBody) -> CallRewriter | None:
        if isinstance(request, ChatCompletionRequest) and request.tool_mode() != "none":
            return CallRewriter(named=request.tool_mode() == "named")
        return None

    def _embeddings(self, request: EmbeddingRequest) -> dict[str, Any]:
        payload = request.model_dump(exclude_none=True)
        truncate = payload.pop("truncate", False)
        if self._measure is not None:
            self._measure.check(request)
        if truncate:
            payload["truncate_prompt_tokens"] = -1  # to the model's window
            payload["truncation_side"] = "right"
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


class InputMeasure:
    """An embedding checkpoint's tokenizer (`tokenizer.json`) and window, to check inputs at the
    gateway as the llama.cpp worker does."""

    def __init__(self, tokenizer_file: Path, window: int, matryoshka: bool = False) -> None:
        from tokenizers import Tokenizer

        self.matryoshka = matryoshka
        """Whether the model was trained to give shorter vectors too (`dimensions`)."""
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_truncation()  # a tokenizer.json may pad and cut (MiniLM's: 128)
        self._tokenizer.no_padding()
        self._n_vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.window = window

    @classmethod
    def of(cls, checkpoint: Path, window: int | None) -> InputMeasure | None:
        """The measure of a checkpoint, or None when it has no readable fast tokenizer."""
        try:
            config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
            matryoshka = bool(config.get("matryoshka_dimensions") or config.get("is_matryoshka"))
            return cls(checkpoint / "tokenizer.json", window, matryoshka) if window else None
        except Exception:  # tokenizers raises plain Exceptions for a missing or bad file
            return None

    def check(self, request: EmbeddingRequest) -> None:
        """Refuses an input longer than the window (unless `truncate`) or with token ids
        outside the vocabulary, naming its index; and `dimensions` for a model of one size."""
        request.check_dimensions(self.matryoshka)
        inputs = request.inputs()
        texts = [item for item in inputs if isinstance(item, str)]
        encoded = iter(self._tokenizer.encode_batch(texts, add_special_tokens=True))
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                length = len(next(encoded).ids)
            else:
                request.check_vocabulary(index, item, self._n_vocab)
                length = len(item)
            if length > self.window and not request.truncate:
                raise request.too_long(index, length, self.window)
