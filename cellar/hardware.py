"""What this machine has for inference: NVIDIA GPUs (NVML, else nvidia-smi) and Apple silicon."""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cellar.cpus import usable_cpus

log = logging.getLogger("cellar.hardware")

_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int
    driver: str


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[Gpu, ...]
    apple_silicon: bool
    probe: str
    """How the GPUs were found (or looked for): nvml, nvidia-smi, or none."""
    cpus: frozenset[int] | None = None
    """The cores the gateway may run on; None where the system cannot pin workers (macOS)."""

    def describe_gpus(self) -> str:
        if not self.gpus:
            return "no NVIDIA GPU visible"
        names = ", ".join(
            f"{g.index}: {g.name} ({g.memory_bytes / 2**30:.0f} GiB)" for g in self.gpus
        )
        return f"{len(self.gpus)} NVIDIA GPU(s) via {self.probe} [{names}]"


def _nvml() -> list[Gpu] | None:
    """GPUs through NVML (the nvidia-ml-py package); None when NVML is not available."""
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, driver not loaded...
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(Gpu(index, str(pynvml.nvmlDeviceGetName(handle)), int(memory), driver))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _nvidia_smi() -> list[Gpu] | None:
    """GPUs through nvidia-smi; None when it is not installed or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = "index,name,memory.total,driver_version"
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi is installed but failed: %s", exc)
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            mib = int(parts[2]) if parts[2].isdigit() else 0
            gpus.append(Gpu(int(parts[0]), parts[1], mib * 2**20, parts[3]))
    return gpus


def detect_gpus() -> tuple[list[Gpu], str]:
    """NVIDIA GPUs visible to this process and how they were found."""
    for probe, find in (("nvml", _nvml), ("nvidia-smi", _nvidia_smi)):
        gpus = find()
        if gpus is not None:
            return gpus, probe
    return [], "none"


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""x86 instructions that compute in bfloat16 (Linux's names for them in /proc/cpuinfo)."""


def cpu_computes_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 instructions (Linux; False where it cannot tell)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool(BF16_FLAGS & set(value.split()))
    return False


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def detect() -> Hardware:
    gpus, probe = detect_gpus()
    return Hardware(tuple(gpus), is_apple_silicon(), probe, usable_cpus())
