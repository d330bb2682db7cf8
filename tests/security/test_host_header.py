"""DNS rebinding: a page in a browser on this machine, served from its own domain that resolves
to 127.0.0.1, sends that domain as `Host`. The gateway answers only loopback names, its bind
address and `server.allowed_hosts`, so such a page can neither read answers nor unload models."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cellar.server.hosts import allowed_hosts, host_name
from tests.standin import Launches, resolved, serve_gateway

BODY = {"model": "m", "prompt": "hi", "max_tokens": 4}


def test_a_foreign_host_is_refused_before_any_route(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches()
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, launches) as gw:
            evil = {"Host": "rebind.attacker.example"}
            for method, path in (("POST", "/v1/completions"), ("POST", "/admin/models/m/load")):
                refused = await gw.http.request(method, path, json=BODY, headers=evil)
                assert refused.status_code == 400, path
                assert refused.json()["error"]["code"] == "host_not_allowed"
            assert not launches.engines  # nothing was loaded
            for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
                answer = await gw.http.post("/v1/completions", json=BODY, headers={"Host": host})
                assert answer.status_code == 200, host

    asyncio.run(scenario())


def test_the_allowed_names() -> None:
    assert allowed_hosts("0.0.0.0", []) == {"localhost", "127.0.0.1", "::1"}
    assert "gpu1.lan" in (allowed_hosts("10.0.0.5", ["GPU1.lan"]) or set())
    assert "10.0.0.5" in (allowed_hosts("10.0.0.5", []) or set())
    assert allowed_hosts("0.0.0.0", ["*"]) is None
    assert [host_name(h) for h in ("a.b:80", "[::1]:8000", "::1", "X")] == [
        "a.b",
        "::1",
        "::1",
        "x",
    ]
