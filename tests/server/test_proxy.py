"""The proxy's cheap recognition of usage events in a passing SSE stream."""

from __future__ import annotations

import json

from cellar.server.proxy import usage_of


def test_usage_events_are_recognised_only_by_their_key() -> None:
    final = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    counted = usage_of(final)
    assert counted is not None and counted.only_usage
    assert counted.usage["completion_tokens"] == 2
    text = json.dumps({"choices": [{"text": 'he said "usage":{ here'}]}).encode()
    assert usage_of(b"data: " + text + b"\n\n") is None
    mixed = b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":1}}\n\n'
    counted = usage_of(mixed)
    assert counted is not None and not counted.only_usage
