"""GGUF quantization through llama-cpp-python's `llama_model_quantize`, in a child process whose
output (a line per tensor) goes to a log file; progress is read from that log."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cellar.child import python_module
from cellar.quantize.targets import QuantizeError, Target

Progress = Callable[[int, int], None]
_TENSOR = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")
_POLL_S = 0.2


def _progress_in(log: Path) -> tuple[int, int] | None:
    try:
        tail = log.read_bytes()[-4096:]
    except OSError:
        return None
    found = _TENSOR.findall(tail)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def quantize_gguf(
    src: Path,
    dst: Path,
    target: Target,
    *,
    threads: int,
    allow_requantize: bool,
    log: Path,
    progress: Progress | None = None,
) -> None:
    """Write `dst`; raises QuantizeError with the log's last lines when llama.cpp fails. On
    Ctrl-C (or any exception) the child is killed before the exception goes on."""
    assert target.ftype is not None
    argv = python_module(
        "cellar.quantize.native",
        str(src),
        str(dst),
        str(target.ftype),
        str(threads),
        "1" if allow_requantize else "0",
    )
    with log.open("wb") as sink:
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        try:
            while child.poll() is None:
                time.sleep(_POLL_S)
                done = _progress_in(log)
                if progress is not None and done is not None:
                    progress(*done)
        except BaseException:
            child.kill()
            child.wait()
            raise
    if child.returncode != 0:
        last = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise QuantizeError(
            f"llama.cpp could not quantize {src.name} (exit code {child.returncode}); "
            f"the end of its log ({log}):\n  " + "\n  ".join(last)
        )
