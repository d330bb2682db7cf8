"""How Cellar starts its own code in a child Python process."""

from __future__ import annotations

import sys


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` with this interpreter.

    `-P` keeps the working directory off `sys.path`: with plain `-m` it comes first, so a
    gateway started in a folder holding a `cellar/` directory would run that code instead.
    """
    return [sys.executable, "-P", "-m", module, *args]
