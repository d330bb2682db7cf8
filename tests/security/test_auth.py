"""Auth fails closed while running: once keys have been required, losing the key file (deleted,
moved, mid-save, or emptied) refuses every caller instead of making each one a keyless admin."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cellar.keys import KeyFile
from tests.standin import Launches, resolved, serve_gateway

BODY = {"model": "m", "prompt": "hi", "max_tokens": 4}


def test_a_lost_or_emptied_key_file_keeps_refusing(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    _, secret = KeyFile(keys).create("ops", role="admin")
    admin = {"Authorization": f"Bearer {secret}"}

    async def scenario() -> None:
        models = [resolved("m", tmp_path)]
        async with serve_gateway(models, tmp_path, Launches(), auth_mode="auto") as gw:
            assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 401
            answer = await gw.http.post("/v1/completions", json=BODY, headers=admin)
            assert answer.status_code == 200
            keys.unlink()  # deleted, moved away, or an editor's delete-then-write
            for path in ("/v1/completions", "/admin/models/m/unload"):
                refused = await gw.http.post(path, json=BODY)
                assert refused.status_code == 401, path
            keys.write_text('{"keys": []}')
            assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 401
            assert (await gw.http.get("/admin/models")).status_code == 401

    asyncio.run(scenario())
