"""The gateway and its workers serve with the network cut: nothing calls home."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cellar.store import ModelStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root for `unshare -n` (CI runs as root)")
def test_serves_inside_a_namespace_without_network(tmp_path: Path, store: ModelStore) -> None:
    script = f"ip link set lo up && {sys.executable} -m tests.offline_probe {tmp_path} {store.root}"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answer:" in result.stdout
