"""engines.pin: a worker started pinned runs, with every thread it starts, on its cores."""

from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.mark.parametrize("args", [[], ["0"], ["0", "worker"], ["x-", "--", "true"]])
def test_a_bad_invocation_fails_without_running_anything(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "cellar.engines.pin", *args], capture_output=True, timeout=60
    )
    assert done.returncode != 0
