"""CPU core lists as Linux writes them (`0-3,8`): the `cpus` a model's worker is pinned to."""

from __future__ import annotations

import os

MAX_CPU = 8191
"""The highest core id a list may name (Linux's largest configurable NR_CPUS)."""
MAX_LIST_CHARS = 4096


def parse_cpu_list(text: str) -> frozenset[int]:
    """The cores `text` names; ValueError saying which part is wrong. Ranges are bounded by
    MAX_CPU before they are expanded."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a list of CPU cores such as `0-3,8`")
    if len(text) > MAX_LIST_CHARS:
        raise ValueError(f"is longer than {MAX_LIST_CHARS} characters")
    cores: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not (_number(first) and (not dash or _number(last))):
            raise ValueError(f"{part.strip()!r} is not a core id or a range such as `0-3`")
        low, high = int(first), int(last) if dash else int(first)
        if high > MAX_CPU or low > high:
            raise ValueError(f"{part.strip()!r} is not a range of core ids 0..{MAX_CPU}")
        cores.update(range(low, high + 1))
    return frozenset(cores)


def _number(text: str) -> bool:
    return text.isascii() and text.isdecimal()


def format_cpu_list(cores: frozenset[int] | set[int]) -> str:
    """`cores` as Linux writes them: `0-3,8`."""
    runs: list[tuple[int, int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], core)
        else:
            runs.append((core, core))
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


def usable_cpus() -> frozenset[int] | None:
    """The cores this process may run on; None where the system cannot pin (macOS)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0))
