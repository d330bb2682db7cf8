"""Chat text that spells a control token, kept as text on vLLM.

vLLM renders a chat and tokenizes the result with the checkpoint's tokenizer, which reads the
text of every special token (`<end_of_turn>`, `<start_of_turn>`, `<bos>`...) as that token
wherever it appears, in a user's message too: a message could close its own turn and forge the
model's. Our llama.cpp worker tokenizes each message as text, apart from the template's
markers; vLLM's server has no such switch (its `split_special_tokens` would split the
template's own markers as well). So before a chat reaches vLLM, every control token's text
inside a message gets a WORD JOINER (U+2060, invisible) after its first character: the model
reads the same characters as text, and no message can make a turn.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

WORD_JOINER = "\u2060"


def control_texts(checkpoint: Path) -> tuple[str, ...]:
    """The texts of the checkpoint's special tokens (`special: true` in its tokenizer files)."""
    found: set[str] = set()
    try:
        added = json.loads((checkpoint / "tokenizer.json").read_text()).get("added_tokens", [])
        found |= {t["content"] for t in added if t.get("special") and t.get("content")}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        pass
    try:
        config = json.loads((checkpoint / "tokenizer_config.json").read_text())
        decoder = config.get("added_tokens_decoder", {}).values()
        found |= {t["content"] for t in decoder if t.get("special") and t.get("content")}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        pass
    return tuple(sorted(t for t in found if len(t) > 1))


def _trie(words: list[str]) -> str:
    """A regex for any of `words`, shaped as a prefix tree (one pass, however many words)."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def pattern(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(char) + pattern(child) for char, child in node.items() if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return pattern(tree)


class Defuser:
    """Puts a WORD JOINER into every control token's text found in a chat's messages."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        self._pattern = re.compile(_trie(list(texts))) if texts else None

    def text(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: m[0][0] + WORD_JOINER + m[0][1:], text)

    def messages(self, messages: list[Any]) -> None:
        """Defuse, in place, the text of each message (a string or text parts)."""
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                message["content"] = self.text(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = self.text(part["text"])
