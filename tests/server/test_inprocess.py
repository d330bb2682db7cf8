"""The fast tier: the real gateway app in this process, a stand-in worker behind it.

Each test drives the supervisor, admission, proxy or metrics over real HTTP in about a second
(the stand-in: tests/standin.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from cellar.deployments import ResolvedDeployment
from cellar.server import loopwatch
from tests.standin import Launches, resolved, serve_gateway, until

BODY = {"model": "m", "prompt": "hi", "max_tokens": 4}


def test_a_client_that_leaves_while_queued_is_counted_as_499(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches(delay_s=1.0)
        deployment = resolved("m", tmp_path, max_concurrency=1, max_queue=4)
        async with serve_gateway([deployment], tmp_path, launches) as gw:
            first = asyncio.create_task(gw.http.post("/v1/completions", json=BODY))
            await until(
                lambda: bool(launches.engines) and launches.engines[0].echo.completions == 1
            )
            with pytest.raises(httpx.ReadTimeout):  # queued behind the first, then gone
                await gw.http.post("/v1/completions", json=BODY, timeout=0.3)
            assert (await first).status_code == 200
            labels = {"model_name": "m"}
            assert await gw.metric("cellar:requests_total", status="499", **labels) == 1
            assert await gw.metric("cellar:requests_total", status="200", **labels) == 1
            assert launches.engines[0].echo.completions == 1  # the one that left never ran

    asyncio.run(scenario())


def test_a_crashed_worker_is_restarted_by_the_next_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches()
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, launches) as gw:
            assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 200
            launches.engines[0].crash()
            assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 200
            assert len(launches.engines) == 2
            assert await gw.metric("cellar:model_restarts_total", model_name="m") == 1

    asyncio.run(scenario())


def test_a_model_that_fails_to_load_backs_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches(fail_start="corrupt file")
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, launches) as gw:
            for tries in (1, 2):  # the first retry is at once
                failed = await gw.http.post("/v1/completions", json=BODY)
                assert failed.status_code == 503 and "corrupt file" in failed.text
                assert len(launches.engines) == tries
            again = (await gw.http.post("/v1/completions", json=BODY)).json()["error"]
            assert again["code"] == "model_unavailable" and "next restart in" in again["message"]
            assert len(launches.engines) == 2  # no start inside the backoff

    asyncio.run(scenario())


def test_an_idle_model_is_unloaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches()
        deployment = resolved("m", tmp_path, keep_alive=0.2)
        async with serve_gateway([deployment], tmp_path, launches) as gw:
            assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 200

            async def state() -> str:
                models = (await gw.http.get("/admin/models")).json()["models"]
                return str(models[0]["state"])

            for _ in range(100):
                if await state() == "stopped":
                    break
                await asyncio.sleep(0.05)
            assert await state() == "stopped"
            assert not launches.engines[0].running

    asyncio.run(scenario())


def test_loading_a_model_evicts_the_least_recently_used_idle_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches()
        models = [resolved(name, tmp_path) for name in ("a", "b")]
        async with serve_gateway(models, tmp_path, launches, budget_bytes=3 * 2**19) as gw:
            for name in ("a", "b"):
                answer = await gw.http.post("/v1/completions", json={**BODY, "model": name})
                assert answer.status_code == 200
            states = {
                m["name"]: m["state"] for m in (await gw.http.get("/admin/models")).json()["models"]
            }
            assert states == {"a": "stopped", "b": "ready"}

    asyncio.run(scenario())


def _switch_scenario(tmp_path: Path, budget_bytes: int) -> dict[str, object]:
    """Reload `m` to another file while a request runs on the first worker; returns the
    switch record after checking that no request failed and the old worker stopped."""

    async def scenario() -> dict[str, object]:
        launches = Launches(delay_s=0.5)
        first = resolved("m", tmp_path)
        second = resolved("m2", tmp_path)  # another file: another version of the model
        again = ResolvedDeployment(first.spec, "llamacpp", "test", second.artifact, None)
        async with serve_gateway(
            [first], tmp_path, launches, budget_bytes=budget_bytes, resolver=lambda _: again
        ) as gw:
            assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 200
            running = asyncio.create_task(gw.http.post("/v1/completions", json=BODY))
            await until(lambda: launches.engines[0].echo.completions == 2)
            reload = asyncio.create_task(gw.http.post("/admin/models/m/reload"))
            await until(lambda: len(launches.engines) == 2)
            during = await gw.http.post("/v1/completions", json=BODY)
            assert during.status_code == 200 and (await running).status_code == 200
            described = (await reload).json()
            assert described["path"] == str(second.path) and described["state"] == "ready"
            assert launches.engines[1].echo.completions == 1  # the request sent during it
            assert not launches.engines[0].running  # the old worker stopped
            assert await gw.metric("cellar:requests_total", model_name="m", status="200") == 3
            record = described["last_switch"]
            assert isinstance(record, dict) and record["outcome"] == "done"
            return record

    return asyncio.run(scenario())


def test_a_switch_with_room_for_both_runs_them_side_by_side(tmp_path: Path) -> None:
    assert _switch_scenario(tmp_path, budget_bytes=2**30)["mode"] == "side by side"


def test_a_switch_without_room_queues_new_requests_until_the_new_version_is_up(
    tmp_path: Path,
) -> None:
    record = _switch_scenario(tmp_path, budget_bytes=3 * 2**19)
    assert record["mode"] == "queued (no room for both versions)"


def test_worker_failures_reach_the_client_in_one_shape_and_are_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches(fail_after=0)  # a 503, then an error event, then a dropped stream
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, launches) as gw:
            refused = await gw.http.post("/v1/completions", json=BODY)
            error = refused.json()["error"]
            assert refused.status_code == 502 and error["code"] == "engine_error"
            assert "overloaded" in error["message"] and "param" in error
            stream = {**BODY, "stream": True}
            relayed = (await gw.http.post("/v1/completions", json=stream)).text
            assert "worker_crashed" in relayed and relayed.endswith("data: [DONE]\n\n")
            dropped = (await gw.http.post("/v1/completions", json=stream)).text
            assert "engine_error" in dropped and dropped.endswith("data: [DONE]\n\n")
            labels = {"model_name": "m"}
            assert await gw.metric("cellar:requests_total", status="502", **labels) == 2
            assert await gw.metric("cellar:requests_total", status="200", **labels) == 1

    asyncio.run(scenario())


def test_beyond_the_queue_requests_get_429_and_are_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches(delay_s=0.5)
        deployment = resolved("m", tmp_path, max_concurrency=1, max_queue=1)
        async with serve_gateway([deployment], tmp_path, launches) as gw:
            first = asyncio.create_task(gw.http.post("/v1/completions", json=BODY))
            await until(
                lambda: bool(launches.engines) and launches.engines[0].echo.completions == 1
            )
            queued = asyncio.create_task(gw.http.post("/v1/completions", json=BODY))
            await until(lambda: gw.app.state.completions.supervisor.get("m").admission.waiting == 1)
            refused = await gw.http.post("/v1/completions", json=BODY)
            assert refused.status_code == 429 and refused.headers["Retry-After"]
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert [(await t).status_code for t in (first, queued)] == [200, 200]
            labels = {"model_name": "m"}
            assert await gw.metric("cellar:requests_total", status="429", **labels) == 1
            assert await gw.metric("cellar:requests_total", status="200", **labels) == 2

    asyncio.run(scenario())


def test_a_stalled_loop_is_counted_in_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loopwatch, "STALL_S", 1.0)
    monkeypatch.setattr(loopwatch, "INTERVAL_S", 0.05)

    async def scenario() -> None:
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, Launches()) as gw:
            assert await gw.metric("cellar:event_loop_stalls_total") == 0
            time.sleep(2.0)  # the gateway runs in this loop: nothing else turns meanwhile
            await asyncio.sleep(0.2)
            assert await gw.metric("cellar:event_loop_stalls_total") == 1

    asyncio.run(scenario())
