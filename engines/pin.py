"""Runs a worker on a set of CPU cores: `python -m cellar.engines.pin 0-3 -- ARGV...` pins
itself and execs ARGV, which inherits the cores with every thread and child it starts (pinning
a started process from outside would miss the threads it already has)."""

from __future__ import annotations

import os
import sys

from cellar.child import python_module
from cellar.cpus import parse_cpu_list


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """`argv` run on `cpus` (a core list, as the config has checked it); `argv` itself when
    None."""
    if cpus is None:
        return argv
    return python_module("cellar.engines.pin", cpus, "--", *argv)


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m cellar.engines.pin CORES -- COMMAND [ARG...]")
    os.sched_setaffinity(0, parse_cpu_list(args[0]))
    os.execvp(args[2], args[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
