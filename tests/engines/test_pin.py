"""engines.pin: a worker started pinned runs, with every thread it starts, on its cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellar.engines.pin import pinned

# Reports the cores of the process and of a thread it starts after exec.
REPORT = """
import os, threading
seen = []
thread = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
thread.start(); thread.join()
print(sorted(os.sched_getaffinity(0)), seen[0])
"""


def test_the_command_and_its_threads_run_on_the_given_cores() -> None:
    core = max(os.sched_getaffinity(0))
    argv = pinned([sys.executable, "-c", REPORT], str(core))
    assert argv[:4] == [sys.executable, "-P", "-m", "cellar.engines.pin"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == [f"[{core}]", f"[{core}]"]


def test_no_cores_leaves_the_command_as_it_is() -> None:
    assert pinned(["worker", "--flag"], None) == ["worker", "--flag"]


@pytest.mark.parametrize("cores", ["x-", "0-99999", "9999"])
def test_bad_cores_fail_without_running_the_command(tmp_path: Path, cores: str) -> None:
    trace = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(trace)!r}, 'w')"]
    done = subprocess.run(
        [sys.executable, "-P", "-m", "cellar.engines.pin", cores, "--", *command],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0 and not trace.exists()
    ran = subprocess.run(pinned(command, str(max(os.sched_getaffinity(0)))), timeout=60)
    assert ran.returncode == 0 and trace.exists()  # the same command, on good cores, runs


@pytest.mark.parametrize("args", [[], ["0"], ["0", "worker"]])
def test_a_bad_invocation_is_refused(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "cellar.engines.pin", *args], capture_output=True, timeout=60
    )
    assert done.returncode != 0 and b"usage" in done.stderr
