"""Auth fails closed while running: once keys have been required, losing the key file (deleted,
moved, mid-save, or emptied) refuses every caller instead of making each one a keyless admin.
Key ids cannot be probed by timing, and the scrypt work a caller can cause is bounded."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from cellar.errors import Overloaded
from cellar.keys import KeyFile, KeyRecord
from cellar.server import auth
from cellar.server.keyguard import MAX_FAILURES, KeyGuard
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


def _refusal_times(tmp_path: Path) -> dict[str, float]:
    """Median seconds to refuse a wrong secret for a real key id, and a made-up id."""
    keys = tmp_path / "keys.json"
    _, secret = KeyFile(keys).create("ops", role="admin")
    known = f"Bearer {secret[:-4]}beef"
    unknown = "Bearer sk-cellar-0badf00d-" + "a" * 43

    async def scenario() -> dict[str, float]:
        models = [resolved("m", tmp_path)]
        async with serve_gateway(models, tmp_path, Launches(), auth_mode="keys") as gw:
            times: dict[str, list[float]] = {"known": [], "unknown": []}
            for _ in range(4):
                for name, header in (("known", known), ("unknown", unknown)):
                    started = time.perf_counter()
                    refused = await gw.http.get("/v1/models", headers={"Authorization": header})
                    times[name].append(time.perf_counter() - started)
                    assert refused.status_code == 401
                    assert refused.json()["error"]["message"] == "Incorrect API key provided."
            return {name: statistics.median(values) for name, values in times.items()}

    return asyncio.run(scenario())


def test_an_unknown_key_id_is_refused_the_same_way_as_a_wrong_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: an unknown id was refused at once and a known one after ~50 ms of scrypt, so
    key ids could be probed by timing."""
    checked: list[str] = []
    real = auth.check_secret

    def counting(record: KeyRecord, secret: str) -> bool:
        checked.append(record.id)
        return real(record, secret)

    monkeypatch.setattr(auth, "check_secret", counting)
    times = _refusal_times(tmp_path)
    assert len(checked) == 8  # every refusal paid one scrypt, whichever id it named
    assert times["unknown"] > 0.5 * times["known"], times


def test_a_client_that_keeps_failing_gets_429_without_more_hashing(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    _, secret = KeyFile(keys).create("ops", role="admin")
    wrong = {"Authorization": "Bearer sk-cellar-0badf00d-" + "a" * 43}

    async def scenario() -> None:
        models = [resolved("m", tmp_path)]
        async with serve_gateway(models, tmp_path, Launches(), auth_mode="keys") as gw:
            ok = await gw.http.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
            assert ok.status_code == 200  # checked once, then known
            statuses = [
                (await gw.http.get("/v1/models", headers=wrong)).status_code
                for _ in range(MAX_FAILURES + 3)
            ]
            assert statuses[:MAX_FAILURES] == [401] * MAX_FAILURES
            assert statuses[MAX_FAILURES:] == [429] * 3
            limited = await gw.http.get("/v1/models", headers=wrong)
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["error"]["code"] == "rate_limit_exceeded"
            # a key already known good still works from there
            ok = await gw.http.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
            assert ok.status_code == 200

    asyncio.run(scenario())


def test_at_most_a_few_key_checks_run_at_once_and_a_bounded_number_wait() -> None:
    guard = KeyGuard(concurrent=2, waiting=3)
    running, peak = 0, 0

    def slow_check() -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        time.sleep(0.05)
        running -= 1
        return False

    async def scenario() -> list[object]:
        return await asyncio.gather(
            *(guard.check(slow_check) for _ in range(10)), return_exceptions=True
        )

    results = asyncio.run(scenario())
    assert peak <= 2
    assert results.count(False) == 5  # two running, three waiting
    assert all(isinstance(r, Overloaded) for r in results if r is not False)
