"""Warm-up, canary and load probes to a loopback worker never go through an HTTP proxy named
in the environment (a proxy would see every warm-up prompt, or break loading)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.standin import Launches, resolved, serve_gateway


def test_loading_ignores_proxy_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens: any use fails
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def scenario() -> None:
        launches = Launches()
        warmed = resolved("m", tmp_path, warmup={"prompts": ["Hello"], "max_tokens": 2})
        async with serve_gateway([warmed], tmp_path, launches) as gw:
            answer = await gw.http.post("/admin/models/m/load")
            assert answer.json()["state"] == "ready", answer.text
            assert launches.engines[0].echo.completions == 1  # the warm-up reached the worker

    asyncio.run(scenario())
