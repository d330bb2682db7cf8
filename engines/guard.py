"""Runs a command that must not outlive the gateway, with everything it spawns.

    python -m cellar.engines.guard -- COMMAND...

A worker we do not write ourselves (vLLM's server) cannot ask the kernel to end it when the
gateway dies, and it spawns processes of its own (the engine core, tensor-parallel workers).
The guard asks for SIGTERM when its parent (the gateway) dies, runs the command in its own
process group, passes SIGTERM/SIGINT on, and when the command ends or the grace period runs
out, kills whatever is left in the group. It exits with the command's status.
Standard library only: it runs before, and beside, any engine environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

PR_SET_PDEATHSIG = 1
GRACE_S = 8.0
POLL_S = 0.1


def _die_with_parent() -> None:
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def group_members(group: int) -> list[int]:
    """Live processes in a process group (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            found.append(int(entry.name))
    return found


def _kill_group() -> None:
    """Everything else in our group: what the command left behind."""
    me = os.getpid()
    for pid in (pid for pid in group_members(os.getpgrp()) if pid != me):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m cellar.engines.guard -- COMMAND...", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    parent = os.getppid()
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # lead a group of our own: only what we spawn is ever killed
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    stop: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only note it: a handler can be interrupted by the next signal, and one that took a
        # lock (an Event's, Popen's) would then wait for itself forever (the guard once hung
        # so, and vLLM outlived a killed gateway).
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)  # before the command starts: none is missed
    signal.signal(signal.SIGINT, on_signal)
    child = subprocess.Popen(command)
    while child.poll() is None and not stop:
        time.sleep(POLL_S)
    if stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # later ones change nothing
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
    if child.poll() is None:
        child.kill()
    code = child.wait()
    _kill_group()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
