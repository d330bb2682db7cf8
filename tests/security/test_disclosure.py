"""What a caller without an admin key learns: /docs and /redoc are gone, /openapi.json (it lists
every model) needs an admin key, and /health/ready shows only each model's name and state, not
its paths, digests, pids or error text."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cellar.keys import KeyFile
from tests.standin import Launches, resolved, serve_gateway


def test_anonymous_callers_learn_only_readiness(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    _, admin = keys.create("ops", role="admin")
    _, user = keys.create("app", models=["m"])

    async def scenario() -> None:
        models = [resolved("m", tmp_path, preload=True), resolved("hidden", tmp_path)]
        async with serve_gateway(models, tmp_path, Launches(), auth_mode="auto") as gw:
            for path in ("/docs", "/redoc"):
                assert (await gw.http.get(path)).status_code == 404
            for key in (None, user):
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                assert (await gw.http.get("/openapi.json", headers=headers)).status_code in (
                    401,
                    403,
                )
                ready = (await gw.http.get("/health/ready", headers=headers)).json()
                assert [set(m) for m in ready["models"]] == [{"name", "state"}] * 2
                assert "audit" not in ready
            # a key limited to some models learns nothing of the others from a refusal
            restricted = {"Authorization": f"Bearer {user}"}
            for model in ("hidden", "no-such-model"):
                body = {"model": model, "prompt": "hi", "max_tokens": 1}
                refused = await gw.http.post("/v1/completions", json=body, headers=restricted)
                assert refused.status_code == 403 and "hidden" not in refused.text.replace(
                    f"`{model}`", ""
                )
            headers = {"Authorization": f"Bearer {admin}"}
            schema = (await gw.http.get("/openapi.json", headers=headers)).json()
            assert "/v1/chat/completions" in schema["paths"]
            full = (await gw.http.get("/health/ready", headers=headers)).json()
            assert full["models"][0]["path"].endswith("m.gguf")

    asyncio.run(scenario())
