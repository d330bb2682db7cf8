"""Audit lines as the gateway writes them, for the drift tests: a baseline of English requests
with short answers, then a window of Vietnamese ones with long answers; the rest alike."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from cellar.features import script_mix

ENGLISH = "Please tell me what the weather will be like in Hanoi tomorrow morning."
VIETNAMESE = "Bạn có thể cho tôi biết thời tiết ở Hà Nội sáng mai như thế nào không?"


def line(when: datetime, rng: random.Random, vietnamese: bool) -> dict[str, Any]:
    prompt, answer_tokens = (VIETNAMESE, rng.randint(120, 200)) if vietnamese else (ENGLISH, 0)
    answer_tokens = answer_tokens or rng.randint(10, 40)
    return {
        "time": when.isoformat(),
        "path": "/v1/chat/completions",
        "model": "gemma",
        "status": 429 if rng.random() < 0.03 else 200,
        "error": None,
        "prompt_tokens": rng.randint(20, 30),
        "completion_tokens": answer_tokens,
        "latency_ms": rng.uniform(200, 400),
        "ttft_ms": rng.uniform(50, 80),
        "finish_reason": "stop" if rng.random() < 0.9 else "length",
        "response_format": "json_object" if rng.random() < 0.2 else None,
        "tools": rng.random() < 0.1,
        "prompt_script": script_mix(prompt),
        "answer_script": script_mix(prompt),
    }


def audit_lines(count: int, start: datetime) -> list[dict[str, Any]]:
    """`count` English requests with short answers over the day from `start`, then `count`
    Vietnamese ones with long answers over the next day; and one line of another model."""
    rng = random.Random(1)
    lines = [line(start + timedelta(minutes=i), rng, vietnamese=False) for i in range(count)]
    later = start + timedelta(days=1)
    lines += [line(later + timedelta(minutes=i), rng, vietnamese=True) for i in range(count)]
    lines.append({**lines[0], "model": "other"})  # another model's requests are not counted
    return lines
