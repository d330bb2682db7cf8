"""Which engine serves a model on this machine, and why.

`auto` picks vLLM when an NVIDIA GPU is visible, a Hugging Face checkpoint of the model exists
and vLLM is installed; llama.cpp otherwise (the GGUF on the CPU, or on Apple silicon with every
layer offloaded to Metal). An explicit engine that cannot work here is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

from cellar.config import CellarConfig, ModelDeployment
from cellar.cpus import format_cpu_list, parse_cpu_list
from cellar.deployments import (
    Artifacts,
    EngineChoice,
    EngineName,
    ResolvedDeployment,
    Resolver,
    resolver_for,
)
from cellar.engines.kinds import engine_kinds
from cellar.engines.vllm.kind import RuntimeFinder, convert_hint
from cellar.engines.vllm.runtime import find_runtime
from cellar.errors import EngineChoiceError
from cellar.hardware import Hardware, detect
from cellar.store import ModelStore


class EngineChooser:
    """A `cellar.deployments.Chooser` for one machine: an explicit engine is asked whether it
    can serve the model here; `auto` prefers vLLM on an NVIDIA GPU, else llama.cpp."""

    def __init__(self, hardware: Hardware, runtimes: RuntimeFinder = find_runtime) -> None:
        self.hardware = hardware
        self._runtimes = runtimes
        self._kinds = engine_kinds(runtimes)

    def _choose(
        self, name: EngineName, spec: ModelDeployment, artifacts: Artifacts, why: str
    ) -> EngineChoice:
        return self._kinds[name].choose(spec, artifacts, self.hardware, why)

    def __call__(self, spec: ModelDeployment, artifacts: Artifacts) -> EngineChoice:
        self._check_cpus(spec)
        if spec.engine != "auto":
            return self._choose(spec.engine, spec, artifacts, f"configured (engine: {spec.engine})")
        return self._auto(spec, artifacts)

    def _check_cpus(self, spec: ModelDeployment) -> None:
        if spec.cpus is None:
            return
        usable = self.hardware.cpus
        if usable is None:
            raise EngineChoiceError("this system cannot pin a worker to cores", key="cpus")
        missing = parse_cpu_list(spec.cpus) - usable
        if missing:
            raise EngineChoiceError(
                f"core(s) {format_cpu_list(missing)} are not among the cores the gateway may "
                f"run on ({format_cpu_list(usable)})",
                key="cpus",
            )

    def _auto(self, spec: ModelDeployment, artifacts: Artifacts) -> EngineChoice:
        gpus = self.hardware.gpus
        if gpus and artifacts.hf is not None:
            runtime = self._runtimes(spec.vllm)
            if not isinstance(runtime, str):
                why = f"auto: {self.hardware.describe_gpus()} and a Hugging Face checkpoint"
                return self._choose("vllm", spec, artifacts, why)
            blocker = runtime
        elif gpus:
            blocker = f"{self.hardware.describe_gpus()}, but no Hugging Face checkpoint"
            blocker += f" ({convert_hint(spec)})"
        else:
            blocker = self.hardware.describe_gpus()
        if artifacts.gguf is not None:
            why = f"auto: {blocker}, so llama.cpp serves the GGUF"
            return self._choose("llamacpp", spec, artifacts, why)
        # Only a checkpoint, no GPU: a CPU build of vLLM can still serve it.
        runtime = self._runtimes(spec.vllm)
        if not isinstance(runtime, str) and runtime.cpu_build:
            why = "auto: only a Hugging Face checkpoint exists"
            return self._choose("vllm", spec, artifacts, why)
        raise EngineChoiceError(
            f"no engine can serve {artifacts.source.label} here: {blocker}, and llama.cpp needs "
            "a GGUF"
        )


def resolve_here(
    config: CellarConfig, store: ModelStore, config_file: Path, hardware: Hardware | None = None
) -> list[ResolvedDeployment]:
    """Every deployment resolved for this machine (ConfigError names the file and the key)."""
    resolve = resolver_here(config, store, config_file, hardware)
    return [resolve(spec) for spec in config.models]


def resolver_here(
    config: CellarConfig, store: ModelStore, config_file: Path, hardware: Hardware | None = None
) -> Resolver:
    """Resolves one deployment of the config again, for this machine."""
    chooser = EngineChooser(hardware if hardware is not None else detect())
    return resolver_for(config, store, config_file, chooser)
