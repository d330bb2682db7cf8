"""engines.guard: a command and everything it spawns end with the guard's parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cellar.child import python_module
from cellar.engines.guard import GRACE_S
from tests.gateway import process_alive

# A "server" that spawns a grandchild in its own group and sleeps; both write their pids.
SPAWNER = """
import subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
Path(sys.argv[1]).write_text(f"{child.pid}")
time.sleep(600)
"""

# The "gateway": starts the guard, reports its pid, then waits to be killed.
PARENT = """
import subprocess, sys, time
from cellar.child import python_module
guard = subprocess.Popen(
    [*python_module("cellar.engines.guard", "--"), sys.executable, "-c", sys.argv[1], sys.argv[2]],
    start_new_session=True,
)
print(guard.pid, flush=True)
time.sleep(600)
"""


def _wait_for(path: Path, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.is_file() or not path.read_text():
        assert time.monotonic() < deadline, "the guarded command never started"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_killing_the_parent_ends_the_guard_and_every_descendant(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, SPAWNER, str(marker)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    guard = int(parent.stdout.readline())
    grandchild = _wait_for(marker)
    assert process_alive(guard) and process_alive(grandchild)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    assert _gone(guard) and _gone(grandchild)


def test_sigterm_stops_the_command_and_exit_status_passes_through(tmp_path: Path) -> None:
    done = subprocess.run(
        [*python_module("cellar.engines.guard", "--"), sys.executable, "-c", "raise SystemExit(3)"],
        timeout=30,
        check=False,
    )
    assert done.returncode == 3
    marker = tmp_path / "grandchild.pid"
    guard = subprocess.Popen(
        [*python_module("cellar.engines.guard", "--"), sys.executable, "-c", SPAWNER, str(marker)],
        start_new_session=True,
    )
    grandchild = _wait_for(marker)
    os.kill(guard.pid, signal.SIGTERM)
    assert guard.wait(timeout=30) == 128 + signal.SIGTERM
    assert _gone(grandchild)


STUBBORN = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SPAWNER
"""A command that ignores SIGTERM: the guard must kill it when its grace period runs out."""


def test_signals_that_keep_coming_still_end_everything(tmp_path: Path) -> None:
    """A dying gateway sends SIGTERM (the parent-death signal) and more may follow. A lock
    taken in a signal handler deadlocks when the next signal interrupts it: the guard once hung
    so, and vLLM outlived a killed gateway. Here signals keep coming through the whole grace
    period, and the guard still kills what ignores them, and ends."""
    marker = tmp_path / "grandchild.pid"
    guard = subprocess.Popen(
        [*python_module("cellar.engines.guard", "--"), sys.executable, "-c", STUBBORN,
         str(marker)],
        start_new_session=True,
    )  # fmt: skip
    grandchild = _wait_for(marker)
    deadline = time.monotonic() + GRACE_S + 20
    while guard.poll() is None:
        assert time.monotonic() < deadline, "the guard hung while signals arrived"
        os.kill(guard.pid, signal.SIGTERM)
        time.sleep(0.0005)
    assert guard.returncode == 128 + signal.SIGKILL  # the command ignored SIGTERM
    assert _gone(grandchild)
