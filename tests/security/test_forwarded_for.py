"""X-Forwarded-For is believed only from configured proxies: a caller on loopback cannot make
the audit log name someone else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellar.store import ModelStore
from tests.gateway import BUNDLED_NAME, start_gateway

pytestmark = pytest.mark.slow


def test_a_forged_forwarded_for_does_not_reach_the_audit_log(
    tmp_path: Path, store: ModelStore
) -> None:
    models = [{"name": "m", "source": f"store:{BUNDLED_NAME}", "preload": False}]
    with start_gateway(tmp_path, store.root, models) as gw, gw.http() as http:
        assert http.get("/v1/models", headers={"X-Forwarded-For": "6.6.6.6"}).status_code == 200
    lines = [json.loads(x) for x in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]
    [line] = [x for x in lines if x["path"] == "/v1/models"]
    assert line["client"] == "127.0.0.1"
