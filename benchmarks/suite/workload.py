"""What a benchmark sends: random prompts of set token lengths, the prompt set shipped with Cellar
(`prompts.jsonl`), or a user's JSONL file.

A JSONL line holds `prompt` (a string, for /v1/completions) or `messages` (OpenAI chat messages,
for /v1/chat/completions), and optionally `max_tokens`. For /v1/embeddings each request takes the
texts of `--batch` prompts. Random prompts are drawn from common
English words; their length in tokens is calibrated against the server's own tokenizer first
(two probe requests), and the record keeps the token counts the server reported.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cellar.errors import ToolError

SHIPPED = "prompts"
RANDOM = "random"
DEFAULT_OUTPUT_LEN = 128

_VOCABULARY = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy music market sense nation plan college interest death "
    "experience effect class control care field development role effort rate heart drug show "
    "leader light voice wife police mind price report decision son view relationship town "
    "road river bread stone garden window paper letter table chair green small large early"
)
_WORDS = tuple(_VOCABULARY.split())


class WorkloadError(ToolError):
    """A prompt file or option that cannot make requests; names the file and line."""


@dataclass(frozen=True)
class Prompt:
    prompt: str | None
    messages: list[dict[str, Any]] | None
    output_len: int
    texts: tuple[str, ...] = ()
    """An embeddings request's inputs (several prompts' texts)."""

    def body(self, api: str) -> dict[str, Any]:
        if api == "embeddings":
            return {"input": list(self.texts) or [self.prompt or ""]}
        if api == "chat":
            messages = self.messages or [{"role": "user", "content": self.prompt or ""}]
            return {"messages": messages}
        return {"prompt": self.prompt}


def _line_prompt(data: Any, where: str, api: str, output_len: int | None) -> Prompt:
    if not isinstance(data, dict):
        raise WorkloadError(f"{where}: expected a JSON object")
    prompt, messages = data.get("prompt"), data.get("messages")
    if (prompt is None) == (messages is None):
        raise WorkloadError(f"{where}: give exactly one of `prompt` or `messages`")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise WorkloadError(f"{where}: `prompt` must be a non-empty string")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise WorkloadError(f"{where}: `messages` must be a non-empty list")
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise WorkloadError(f"{where}: every message needs a `role`")
        if api != "chat":
            raise WorkloadError(f"{where}: chat `messages` need --api chat")
    max_tokens = data.get("max_tokens", DEFAULT_OUTPUT_LEN)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise WorkloadError(f"{where}: `max_tokens` must be a positive integer")
    return Prompt(prompt, messages, output_len or max_tokens)


def read_prompts(path: Path, api: str, output_len: int | None) -> list[Prompt]:
    """Every prompt of a JSONL file, checked; blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WorkloadError(f"{path}: not UTF-8 text") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise WorkloadError(f"{path}:{number}: bad JSON: {exc}") from None
        prompts.append(_line_prompt(data, f"{path}:{number}", api, output_len))
    if not prompts:
        raise WorkloadError(f"{path}: no prompts")
    return prompts


def shipped_prompts_path() -> Path:
    return Path(str(resources.files("cellar.benchmarks.suite") / "prompts.jsonl"))


@dataclass(frozen=True)
class Calibration:
    """Prompt tokens = intercept + per_word x words, as the server counted them."""

    per_word: float
    intercept: float

    def words_for(self, tokens: int) -> int:
        return max(1, round((tokens - self.intercept) / self.per_word))


class Workload:
    """An endless, reproducible sequence of prompts."""

    def __init__(
        self,
        fixed: list[Prompt] | None,
        *,
        seed: int,
        input_len: int = 0,
        output_len: int = DEFAULT_OUTPUT_LEN,
        range_ratio: float = 0.0,
        calibration: Calibration | None = None,
        batch: int = 0,
    ) -> None:
        """`batch`: texts per request, each request an embeddings one (0: prompts)."""
        if not 0.0 <= range_ratio < 1.0:
            raise WorkloadError(f"--range-ratio {range_ratio}: must be in [0, 1)")
        self._fixed = fixed
        self._rng = random.Random(seed)
        self._input_len = input_len
        self._output_len = output_len
        self._ratio = range_ratio
        self._calibration = calibration or Calibration(1.0, 0.0)
        self._order: list[int] = []
        self._batch = batch

    def _vary(self, length: int) -> int:
        low = max(1, round(length * (1 - self._ratio)))
        high = max(low, round(length * (1 + self._ratio)))
        return self._rng.randint(low, high)

    def next(self) -> Prompt:
        if not self._batch:
            return self._one()
        texts = []
        for _ in range(self._batch):
            prompt = self._one()
            messages = prompt.messages or []
            texts.append(prompt.prompt or " ".join(str(m.get("content")) for m in messages))
        return Prompt(None, None, 0, tuple(texts))

    def _one(self) -> Prompt:
        if self._fixed is not None:
            if not self._order:
                self._order = list(range(len(self._fixed)))
                self._rng.shuffle(self._order)
            return self._fixed[self._order.pop()]
        words = self._calibration.words_for(self._vary(self._input_len))
        text = " ".join(self._rng.choices(_WORDS, k=words))
        return Prompt(text, None, self._vary(self._output_len))


def random_text(words: int, seed: int = 0) -> str:
    return " ".join(random.Random(seed).choices(_WORDS, k=words))
