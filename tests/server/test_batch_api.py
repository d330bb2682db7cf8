"""The Files and Batches API in the fast tier: the real gateway app in this process with a
stand-in worker (tests/standin.py), driven over real HTTP. The real model runs batches in
tests/server/test_batches.py."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cellar.batchfile import batch_lines, read_lines, result_line
from cellar.cli.main import app
from cellar.config_access import BatchSettings
from cellar.errors import ConfigError
from cellar.keys import KeyFile
from cellar.server.batchstore import BatchStore
from tests.standin import InProcessGateway, Launches, resolved, serve_gateway, until


def request_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "m", "prompt": "hi", "max_tokens": 2, **body},
    }


def jsonl(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


async def upload(
    gw: InProcessGateway, content: bytes, key: str | None = None, purpose: str = "batch"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    files = {"file": ("requests.jsonl", content, "application/jsonl")}
    return await gw.http.post("/v1/files", files=files, data={"purpose": purpose}, headers=headers)


async def finished(gw: InProcessGateway, batch_id: str, key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for _ in range(500):
        batch: dict[str, Any] = (
            await gw.http.get(f"/v1/batches/{batch_id}", headers=headers)
        ).json()
        if batch["status"] in ("completed", "cancelled", "expired", "failed"):
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


async def lines_of(gw: InProcessGateway, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = (await gw.http.get(f"/v1/files/{file_id}/content")).text
    return [json.loads(line) for line in text.splitlines()]


def test_a_batch_answers_each_request_once_and_files_a_bad_body_with_its_reason(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        launches = Launches()
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, launches) as gw:
            items = [request_line(f"r{i}") for i in range(40)]
            items[7] = request_line("r7", max_tokens=-3)  # refused by the gateway: 400
            uploaded = await upload(gw, jsonl(items))
            assert uploaded.status_code == 200, uploaded.text
            file = uploaded.json()
            assert file["purpose"] == "batch" and file["requests"] == 40
            created = await gw.http.post(
                "/v1/batches",
                json={
                    "input_file_id": file["id"],
                    "endpoint": "/v1/completions",
                    "completion_window": "24h",
                    "metadata": {"job": "nightly"},
                },
            )
            assert created.status_code == 200, created.text
            batch = await finished(gw, created.json()["id"])
            assert batch["status"] == "completed" and batch["metadata"] == {"job": "nightly"}
            assert batch["request_counts"] == {"total": 40, "completed": 39, "failed": 1}
            output = await lines_of(gw, batch["output_file_id"])
            errors = await lines_of(gw, batch["error_file_id"])
            ids = [line["custom_id"] for line in output + errors]
            assert sorted(ids) == sorted(f"r{i}" for i in range(40))
            assert all(line["response"]["status_code"] == 200 for line in output)
            [bad] = errors
            assert bad["custom_id"] == "r7" and bad["response"]["status_code"] == 400
            assert bad["response"]["body"]["error"]["param"] == "max_tokens"
            assert launches.engines[0].echo.completions == 39
            listed = (await gw.http.get("/v1/batches")).json()
            assert [b["id"] for b in listed["data"]] == [batch["id"]]
            progress = (await gw.http.get("/admin/batches")).json()["data"]
            assert progress[0]["request_counts"]["completed"] == 39
            finished_total = "cellar:batch_requests_finished_total"
            assert await gw.metric(finished_total, priority="10", outcome="completed") == 39
            assert await gw.metric("cellar:batch_requests", priority="10", state="queued") == 0
            assert await gw.metric("cellar:batch_oldest_queued_age_seconds") == 0
            url = ["--base-url", gw.base_url]
            listed_cli = await asyncio.to_thread(
                CliRunner().invoke, app, ["batches", "list", "--json", *url]
            )
            assert json.loads(listed_cli.output)["data"][0]["id"] == batch["id"]
            shown = await asyncio.to_thread(
                CliRunner().invoke, app, ["batches", "show", batch["id"], *url]
            )
            assert "40/40 (100%)" in shown.output, shown.output
            again = await asyncio.to_thread(
                CliRunner().invoke, app, ["batches", "cancel", batch["id"], *url]
            )
            assert again.exit_code == 2 and "only an unfinished batch" in again.output

    asyncio.run(scenario())


def test_malformed_and_oversized_uploads_name_the_problem_and_keep_nothing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        settings = BatchSettings(max_file_size=4096, max_requests=3)
        async with serve_gateway(
            [resolved("m", tmp_path)], tmp_path, Launches(), batches=settings
        ) as gw:
            good = request_line("a")
            cases = {
                b"{not json\n": "line 1: not JSON",
                jsonl([good, good]): "line 2: `custom_id` 'a' repeats line 1",
                jsonl([good, {**request_line("b"), "method": "GET"}]): "line 2: `method`",
                jsonl([{**good, "url": "/v1/images"}]): "line 1: `url` must be one of",
                jsonl([{**good, "body": [1]}]): "line 1: `body` must be a JSON object",
                jsonl([good, {**request_line("b"), "url": "/v1/embeddings"}]): "differs",
                jsonl([request_line(str(i)) for i in range(4)]): "more than 3 requests",
                b"\n\n": "no requests",
            }
            for content, problem in cases.items():
                refused = await upload(gw, content)
                assert refused.status_code == 400, refused.text
                error = refused.json()["error"]
                assert problem in error["message"] and error["param"] == "file", error
            wrong = await upload(gw, jsonl([good]), purpose="fine-tune")
            assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose"
            big = await upload(gw, jsonl([request_line("a", prompt="x" * 5000)]))
            assert big.status_code == 413, big.text
            assert (await gw.http.get("/v1/files")).json()["data"] == []
            assert list((tmp_path / "batches" / "files").iterdir()) == []

    asyncio.run(scenario())


def test_a_key_sees_only_its_own_files_and_batches(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys = KeyFile(tmp_path / "keys.json")
        _, alice = keys.create("alice")
        _, bob = keys.create("bob")
        _, admin = keys.create("ops", role="admin")
        launches = Launches()
        async with serve_gateway(
            [resolved("m", tmp_path)], tmp_path, launches, auth_mode="keys"
        ) as gw:
            as_bob = {"Authorization": f"Bearer {bob}"}
            file = (await upload(gw, jsonl([request_line("a")]), key=alice)).json()
            created = await gw.http.post(
                "/v1/batches",
                json={"input_file_id": file["id"], "endpoint": "/v1/completions"},
                headers={"Authorization": f"Bearer {alice}"},
            )
            batch = await finished(gw, created.json()["id"], key=alice)
            for method, path in (
                ("GET", f"/v1/files/{file['id']}"),
                ("GET", f"/v1/files/{file['id']}/content"),
                ("DELETE", f"/v1/files/{file['id']}"),
                ("GET", f"/v1/batches/{batch['id']}"),
                ("POST", f"/v1/batches/{batch['id']}/cancel"),
                ("GET", f"/v1/files/{batch['output_file_id']}/content"),
                ("GET", "/v1/files/file-000000000000000000000000"),
                ("GET", "/v1/files/..%2Fbatches.sqlite3/content"),  # ids never become paths
                ("GET", "/v1/files/%2E%2E/content"),
            ):
                refused = await gw.http.request(method, path, headers=as_bob)
                assert refused.status_code == 404, (method, path, refused.text)
                assert "no such" in refused.json()["error"]["message"].lower()
            stolen = await gw.http.post(
                "/v1/batches",
                json={"input_file_id": file["id"], "endpoint": "/v1/completions"},
                headers=as_bob,
            )
            assert stolen.status_code == 404
            assert (await gw.http.get("/v1/files", headers=as_bob)).json()["data"] == []
            assert (await gw.http.get("/v1/batches", headers=as_bob)).json()["data"] == []
            everything = (
                await gw.http.get("/v1/files", headers={"Authorization": f"Bearer {admin}"})
            ).json()["data"]
            assert {f["id"] for f in everything} == {file["id"], batch["output_file_id"]}
            assert launches.engines[0].echo.completions == 1

    asyncio.run(scenario())


def test_quotas_on_bytes_and_queued_requests(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = BatchSettings(max_bytes_per_key=2048, max_queued_per_key=3)
        async with serve_gateway(
            [resolved("m", tmp_path)], tmp_path, Launches(delay_s=5), batches=settings
        ) as gw:
            first = await upload(gw, jsonl([request_line(str(i)) for i in range(3)]))
            assert first.status_code == 200
            over = await upload(gw, jsonl([request_line(str(i)) for i in range(30)]))
            assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
            body = {"input_file_id": first.json()["id"], "endpoint": "/v1/completions"}
            assert (await gw.http.post("/v1/batches", json=body)).status_code == 200
            again = await gw.http.post("/v1/batches", json=body)
            assert again.status_code == 429 and "max_queued_per_key" in again.text

    asyncio.run(scenario())


def test_cancel_stops_new_requests_and_files_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches(delay_s=0.3)
        settings = BatchSettings(in_flight=2)
        async with serve_gateway(
            [resolved("m", tmp_path)], tmp_path, launches, batches=settings
        ) as gw:
            file = (await upload(gw, jsonl([request_line(f"r{i}") for i in range(30)]))).json()
            body = {"input_file_id": file["id"], "endpoint": "/v1/completions"}
            batch_id = (await gw.http.post("/v1/batches", json=body)).json()["id"]
            await until(lambda: bool(launches.engines) and launches.engines[0].echo.completions > 0)
            assert await gw.metric("cellar:batch_requests", priority="10", state="queued") > 20
            assert await gw.metric("cellar:batch_requests", priority="10", state="running") >= 1
            cancelling = await gw.http.post(f"/v1/batches/{batch_id}/cancel")
            assert cancelling.json()["status"] in ("cancelling", "cancelled")
            started = launches.engines[0].echo.completions
            batch = await finished(gw, batch_id)
            assert batch["status"] == "cancelled"
            assert launches.engines[0].echo.completions <= started + 2  # those in flight
            output = await lines_of(gw, batch["output_file_id"])
            skipped = await lines_of(gw, batch["error_file_id"])
            assert len(output) + len(skipped) == 30
            assert {line["error"]["code"] for line in skipped} == {"batch_cancelled"}
            again = await gw.http.post(f"/v1/batches/{batch_id}/cancel")
            assert again.status_code == 400

    asyncio.run(scenario())


def test_a_batch_left_unfinished_resumes_without_answering_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        launches = Launches()
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, launches) as gw:
            file = (await upload(gw, jsonl([request_line(f"r{i}") for i in range(10)]))).json()
        # as if the gateway had died with 4 requests answered: the store holds them
        store = BatchStore(tmp_path / "batches")
        with open(store.path_of(file["id"]), "rb") as handle:
            lines = list(batch_lines(read_lines(handle)))
        store.create_batch("batch_x", "-", "/v1/completions", file["id"], "24h", 86400, None, lines)
        for item in lines[:4]:
            store.record("batch_x", item.line, True, result_line(item.custom_id, 200, {"ok": 1}))
        store.close()
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, launches) as gw:
            batch = await finished(gw, "batch_x")
            output = await lines_of(gw, batch["output_file_id"])
        assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(10)]
        assert [line["response"]["body"] == {"ok": 1} for line in output] == [True] * 4 + [
            False
        ] * 6
        assert launches.engines[-1].echo.completions == 6

    asyncio.run(scenario())


def test_a_key_may_wait_longer_but_not_jump_the_queue(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys = KeyFile(tmp_path / "keys.json")
        _, user = keys.create("app")
        _, night = keys.create("nightly", priority=20)
        _, admin = keys.create("ops", role="admin")
        async with serve_gateway(
            [resolved("m", tmp_path)], tmp_path, Launches(), auth_mode="keys"
        ) as gw:
            body = {"model": "m", "prompt": "hi", "max_tokens": 2}

            async def send(key: str, **extra: Any) -> httpx.Response:
                headers = {"Authorization": f"Bearer {key}"}
                return await gw.http.post("/v1/completions", json=body | extra, headers=headers)

            assert (await send(user, priority=5)).status_code == 200
            jumped = await send(user, priority=-1)
            assert jumped.status_code == 403 and jumped.json()["error"]["param"] == "priority"
            assert (await send(night, priority=3)).status_code == 403  # its own is 20
            assert (await send(night)).status_code == 200
            assert (await send(admin, priority=-50)).status_code == 200
            assert (await send(user, priority=5000)).status_code == 400

    asyncio.run(scenario())


def test_a_full_disk_is_a_507_and_keeps_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    real_open = os.open

    def no_room(path: Any, flags: int, mode: int = 0o777) -> int:
        if Path(path).parent.name == "files":  # the upload's copy: a disk with no room left
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode)

    async def scenario() -> None:
        async with serve_gateway([resolved("m", tmp_path)], tmp_path, Launches()) as gw:
            monkeypatch.setattr(os, "open", no_room)
            full = await upload(gw, jsonl([request_line("a")]))
            monkeypatch.undo()
            assert full.status_code == 507 and full.json()["error"]["code"] == "storage_full"
            assert (await gw.http.get("/v1/files")).json()["data"] == []
            assert list((tmp_path / "batches" / "files").iterdir()) == []
            assert (await upload(gw, jsonl([request_line("a")]))).status_code == 200

    asyncio.run(scenario())


def test_a_request_larger_than_its_key_s_minute_fails_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys = KeyFile(tmp_path / "keys.json")
        _, key = keys.create("small", tpm=200)
        async with serve_gateway(
            [resolved("m", tmp_path)], tmp_path, Launches(), auth_mode="keys"
        ) as gw:
            items = [request_line("small"), request_line("huge", max_tokens=1000)]
            file = (await upload(gw, jsonl(items), key=key)).json()
            created = await gw.http.post(
                "/v1/batches",
                json={"input_file_id": file["id"], "endpoint": "/v1/completions"},
                headers={"Authorization": f"Bearer {key}"},
            )
            batch = await finished(gw, created.json()["id"], key=key)
            assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
            content = await gw.http.get(
                f"/v1/files/{batch['error_file_id']}/content",
                headers={"Authorization": f"Bearer {key}"},
            )
            [huge] = [json.loads(line) for line in content.text.splitlines()]
            assert huge["custom_id"] == "huge" and huge["response"]["status_code"] == 429
            assert "tokens per minute" in huge["response"]["body"]["error"]["message"]

    asyncio.run(scenario())


def test_files_expire(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = BatchSettings(file_ttl=0.4)
        async with serve_gateway(
            [resolved("m", tmp_path)], tmp_path, Launches(), batches=settings
        ) as gw:
            file = (await upload(gw, jsonl([request_line("a")]))).json()
            assert (await gw.http.get(f"/v1/files/{file['id']}")).status_code == 200
            await until(lambda: not list((tmp_path / "batches" / "files").iterdir()), 5)
            assert (await gw.http.get(f"/v1/files/{file['id']}")).status_code == 404

    asyncio.run(scenario())


def test_an_embeddings_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        deployment = resolved("e", tmp_path, task="embed")
        async with serve_gateway([deployment], tmp_path, Launches()) as gw:
            items = [
                {
                    "custom_id": f"v{i}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "e", "input": [f"text {i}", "more"]},
                }
                for i in range(5)
            ]
            file = (await upload(gw, jsonl(items))).json()
            wrong = await gw.http.post(
                "/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/completions"}
            )
            assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "endpoint"
            created = await gw.http.post(
                "/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/embeddings"}
            )
            batch = await finished(gw, created.json()["id"])
            output = await lines_of(gw, batch["output_file_id"])
            assert [len(line["response"]["body"]["data"]) for line in output] == [2] * 5

    asyncio.run(scenario())


def test_a_corrupt_database_names_its_file(tmp_path: Path) -> None:
    root = tmp_path / "batches"
    root.mkdir()
    (root / "batches.sqlite3").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(ConfigError, match=r"batches\.sqlite3: not a usable batches database"):
        BatchStore(root)
