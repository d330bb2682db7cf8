"""Running `cellar bench` as a user does: a real process, output wide enough not to wrap."""

from __future__ import annotations

import os
import subprocess
import sys


def cellar(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "cellar", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
