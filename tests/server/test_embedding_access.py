"""The gateway's rules hold for embeddings as for generation, in front of a stand-in worker:
a key limited to some models cannot embed with another, rpm and tpm limits refuse with 429
(tpm counting input tokens), the admission queue refuses beyond its length, and each outcome is
counted under the model's name."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cellar.keys import KeyFile
from tests.standin import Launches, resolved, serve_gateway, until


def test_keys_limits_and_the_queue_apply_to_embeddings(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    _, only_a = keys.create("app", models=["a"], rpm=3)
    _, few_tokens = keys.create("small", models=["a"], tpm=50)
    _, admin = keys.create("ops", role="admin")
    app = {"Authorization": f"Bearer {only_a}"}
    small = {"Authorization": f"Bearer {few_tokens}"}

    async def scenario() -> None:
        models = [resolved("a", tmp_path, task="embed"), resolved("b", tmp_path, task="embed")]
        async with serve_gateway(models, tmp_path, Launches(), auth_mode="keys") as gw:
            body = {"model": "a", "input": ["one", "two"]}
            assert (await gw.http.post("/v1/embeddings", json=body)).status_code == 401
            ok = await gw.http.post("/v1/embeddings", json=body, headers=app)
            assert ok.status_code == 200 and len(ok.json()["data"]) == 2
            other = await gw.http.post("/v1/embeddings", json={**body, "model": "b"}, headers=app)
            assert other.status_code == 403
            statuses = [
                (await gw.http.post("/v1/embeddings", json=body, headers=app)).status_code
                for _ in range(3)
            ]
            assert statuses == [200, 200, 429]  # rpm 3, the first request included
            heavy = {"model": "a", "input": ["x" * 400]}  # about 100 input tokens
            refused = await gw.http.post("/v1/embeddings", json=heavy, headers=small)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            gw.http.headers["Authorization"] = f"Bearer {admin}"  # /metrics wants an admin
            assert await gw.metric("cellar:requests_total", model_name="a", status="429") == 2

    asyncio.run(scenario())


def test_embeddings_wait_their_turn_and_beyond_the_queue_get_429(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches(delay_s=0.5)
        deployment = resolved("e", tmp_path, task="embed", max_concurrency=1, max_queue=1)
        body = {"model": "e", "input": "hello"}
        async with serve_gateway([deployment], tmp_path, launches) as gw:
            first = asyncio.create_task(gw.http.post("/v1/embeddings", json=body))
            await until(lambda: gw.app.state.completions.supervisor.get("e").admission.running == 1)
            queued = asyncio.create_task(gw.http.post("/v1/embeddings", json=body))
            await until(lambda: gw.app.state.completions.supervisor.get("e").admission.waiting == 1)
            refused = await gw.http.post("/v1/embeddings", json=body)
            assert refused.status_code == 429 and refused.headers["Retry-After"]
            assert [(await t).status_code for t in (first, queued)] == [200, 200]
            assert await gw.metric("cellar:requests_total", model_name="e", status="200") == 2

    asyncio.run(scenario())
