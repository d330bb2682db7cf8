"""Schemathesis fuzzes the gateway from its own OpenAPI schema: no generated request may get a
5xx or take a worker down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellar.store import ModelStore
from tests.gateway import MODEL, default_models, process_alive, start_gateway

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 60
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_fuzzing_finds_no_server_error(tmp_path: Path, store: ModelStore) -> None:
    models = default_models()
    models[0]["max_tokens"] = 8  # valid generated requests stay cheap
    with start_gateway(tmp_path, store.root, models) as gw:
        pid = gw.admin_models()[MODEL]["pid"]
        events = tmp_path / "events.ndjson"
        done = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{gw.base_url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(EXAMPLES_PER_OPERATION),
                "--exclude-path-regex",
                "unload$",  # would only make the fuzzer wait for loads
                "--seed",
                "1",
                "--report",
                "ndjson",
                "--report-ndjson-path",
                str(events),
                "--request-timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=1500,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        assert done.returncode == 0, done.stdout[-6000:]
        assert process_alive(pid)
        assert gw.admin_models()[MODEL]["restarts"] == 0
    statuses: dict[int, int] = {}
    for line in events.read_text().splitlines():
        for status in _statuses(json.loads(line)):
            statuses[status] = statuses.get(status, 0) + 1
    assert sum(statuses.values()) >= 500, statuses
    assert not [s for s in statuses if s >= 500], statuses


def _statuses(event: object) -> list[int]:
    """Every HTTP status recorded anywhere in one ndjson event."""
    found: list[int] = []
    if isinstance(event, dict):
        response = event.get("response")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            found.append(response["status_code"])
        for value in event.values():
            if isinstance(value, dict | list):
                found += _statuses(value)
    elif isinstance(event, list):
        for value in event:
            found += _statuses(value)
    return found
