"""What the gateway records about a request's text without keeping it: the mix of writing
systems in the prompt and in the answer (the drift report's language features).

Letters are classed by the script Unicode names them with (LATIN, CYRILLIC, CJK, HANGUL, ...).
Latin letters that carry a mark (`é`, `ệ`, `đ`) are their own class, `latin-marked`: English is
almost all plain `latin`, while Vietnamese is a third or more `latin-marked`, so a shift between
them shows without guessing languages. Digits, spaces and punctuation are not counted.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache

PROMPT_SAMPLE_CHARS = 4096
"""The prompt's last characters that are classed (the newest turn; a bounded cost per request)."""
MARKED_LABEL_SHARE = 0.1
"""A text whose Latin letters are at least this share marked is labelled `latin-marked`."""
_CJK = ("CJK", "HIRAGANA", "KATAKANA")


@lru_cache(maxsize=4096)
def script_of(char: str) -> str | None:
    """The class of one character; None for what is not a letter."""
    if not char.isalpha():
        return None
    try:
        name = unicodedata.name(char)
    except ValueError:
        return "other"
    script = name.split(" ", 1)[0]
    if script == "LATIN":
        return "latin-marked" if " WITH " in name else "latin"
    if script.startswith(_CJK):
        return "cjk"
    return script.lower()


class ScriptCounter:
    """Letters per class, fed piece by piece (a streamed answer)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, text: str) -> None:
        for char in text:
            script = script_of(char)
            if script is not None:
                self.counts[script] += 1

    def mix(self) -> dict[str, float] | None:
        """Each class's share of the letters, rounded; None when there were none."""
        total = sum(self.counts.values())
        if not total:
            return None
        return {script: round(n / total, 3) for script, n in self.counts.most_common()}


def script_mix(text: str, limit: int = PROMPT_SAMPLE_CHARS) -> dict[str, float] | None:
    """The mix of `text`'s last `limit` characters."""
    counter = ScriptCounter()
    counter.add(text[-limit:])
    return counter.mix()


def script_label(mix: dict[str, float] | None) -> str:
    """One category for a mix: its main script, with Latin split into plain and marked."""
    if not mix:
        return "none"
    latin = mix.get("latin", 0.0) + mix.get("latin-marked", 0.0)
    others = {k: v for k, v in mix.items() if not k.startswith("latin")}
    if others and max(others.values()) > latin:
        return max(others, key=lambda k: others[k])
    return "latin-marked" if mix.get("latin-marked", 0.0) >= MARKED_LABEL_SHARE * latin else "latin"
