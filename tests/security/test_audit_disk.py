"""The audit log survives a full disk: lines it cannot write are counted (metric, /health/ready
degraded, /admin/system), requests keep being served, and writing resumes once space returns.
The full disk is /dev/full (every write fails with ENOSPC) behind the log's path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cellar.config_access import AuditSettings
from cellar.server.auditwriter import RETRY_S, AuditLog
from tests.standin import Launches, resolved, serve_gateway, until

BODY = {"model": "m", "prompt": "hi", "max_tokens": 4}


def test_a_full_disk_loses_counted_lines_and_writing_resumes(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    path.parent.mkdir()
    path.symlink_to("/dev/full")
    audit = AuditLog(AuditSettings(), path)

    async def scenario() -> None:
        models = [resolved("m", tmp_path)]
        async with serve_gateway(models, tmp_path, Launches(), audit=audit) as gw:
            for _ in range(3):
                assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 200
            await until(lambda: audit.dropped >= 3)
            ready = (await gw.http.get("/health/ready")).json()
            assert ready["status"] == "degraded" and ready["audit"]["dropped"] >= 3
            assert "No space left" in ready["audit"]["error"]
            assert await gw.metric("cellar:audit_lines_dropped_total") >= 3
            path.unlink()  # space returns
            await asyncio.sleep(RETRY_S + 0.1)
            assert (await gw.http.post("/v1/completions", json=BODY)).status_code == 200
            await until(lambda: path.is_file() and path.stat().st_size > 0 and not audit.error)
            assert (await gw.http.get("/health/ready")).json()["status"] == "ready"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines and lines[0]["path"] == "/v1/completions"
        assert path.stat().st_mode & 0o777 == 0o600  # it may hold prompts

    asyncio.run(scenario())
